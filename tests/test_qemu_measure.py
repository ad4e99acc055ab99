"""The calibration cells' figures measured from a real run's samples
(pykvmdirty/qemu/measure.py) and the per-goal diagnosis (diagnose.py), on
hand-made samples with hand-computed results."""
from types import SimpleNamespace

import pytest

from pykvmdirty.qemu.diagnose import explain
from pykvmdirty.qemu.measure import bulk_normal_cost, fault_rate, fault_rate_how, iter_fault_rate


def S(t, gp, sync=1, normal=0, dup=0, xfer=0, status="active", thr=0):
    return dict(t=t, guest_pages=gp, dirty_sync_count=sync, normal=normal, duplicate=dup,
                transferred=xfer, status=status, throttle=thr)


def test_fault_rate_times_the_first_sweep_over_protected_pages():
    # from the start of logging (0.1) to the counter's second move (midpoint 0.6)
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(0.5, 1000),
                                 S(0.7, 2000)])
    assert fault_rate(r, 1000) == pytest.approx(1000 / 0.5)
    # two sweeps' worth in one interval: the same rule
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.3, 0), S(0.5, 5000)])
    assert fault_rate(r, 1000) == pytest.approx(1000 / 0.3)
    # one move only by the last sample at 1.1: fewer than 1000 first writes in 1 s
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(1.1, 1000)])
    assert fault_rate(r, 1000) == pytest.approx(1000)
    # no move while active: fewer than 1000 first writes in 0.1 s
    assert fault_rate(SimpleNamespace(samples=[S(0.1, 5), S(0.2, 5)]), 1000) == \
        pytest.approx(10000)
    assert fault_rate(SimpleNamespace(samples=[]), 1000) is None


def test_iter_fault_rate_uses_unthrottled_samples_from_the_second_sync():
    # from t=1.0 (sync 2) to t=2.0: 3000 pages; the throttled sample at 2.5 is left out.
    # 6 syncs in that second: a sync every 0.167 s, a sweep of 1000 pages 0.33 s
    r = SimpleNamespace(samples=[S(0.5, 0, 1), S(1.0, 1000, 2), S(1.5, 2000, 5),
                                 S(2.0, 4000, 8), S(2.5, 9000, 9, thr=20)])
    assert iter_fault_rate(r, 1000) == pytest.approx(3000)
    # 4 syncs in 1 s but 5000 pages/s sweeps 1000 pages in 0.2 s < 0.25 s per sync:
    # rewrites at native speed, not fault-bound
    r = SimpleNamespace(samples=[S(1.0, 0, 2), S(2.0, 5000, 6)])
    assert iter_fault_rate(r, 1000) is None
    # less than one whole sweep seen: not measurable
    r = SimpleNamespace(samples=[S(1.0, 0, 2), S(2.0, 500, 3)])
    assert iter_fault_rate(r, 1000) is None


def test_fault_rate_says_how_it_was_timed():
    # logging starts at 0.1 (counter 0); the rest of the sweep under way ends by 0.3,
    # the next one (faults on the pages before where the guest was) by 0.7: 1000
    # first writes from 0.1 to the midpoint 0.6
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(0.5, 1000),
                                 S(0.7, 2000), S(0.8, 90000)])
    assert fault_rate_how(r, 1000) == (pytest.approx(2000), "the first sweep over protected "
                                       "pages timed")
    r = SimpleNamespace(samples=[S(0.1, 5), S(0.3, 5)])
    rate, how = fault_rate_how(r, 1000)
    assert rate == pytest.approx(5000)
    assert how == "upper bound: no sweep end by the last active sample"


def test_bulk_normal_cost_from_the_mostly_normal_intervals():
    # bulk pass (sync 1): 0.1 s for 1000 normal pages, 0.1 s for 1000 normal + 10000
    # zero pages at 1 us: (0.1 + 0.1 - 0.01) / 2000 normal pages; the sync-2 interval
    # is left out
    samples = [S(0.0, 0, 1, 0, 0, 0), S(0.1, 0, 1, 1000, 0, 4e6),
               S(0.2, 0, 1, 2000, 10000, 8e6), S(0.3, 0, 2, 9000, 10000, 40e6)]
    cost, how = bulk_normal_cost(samples, 1e-6)
    assert cost == pytest.approx(0.19 / 2000)
    assert "2 100 ms intervals sending 2000 normal pages" in how
    # fewer than 1000 normal pages: not measured, and says why
    cost, how = bulk_normal_cost([S(0.0, 0, 1), S(0.1, 0, 1, 500, 0, 2e6)], 1e-6)
    assert cost is None and how == "only 500 normal pages in mostly-normal intervals"
    assert bulk_normal_cost([S(0.0, 0, 1)], 1e-6) == (None, "no bulk-pass interval")


def test_explain_names_the_mechanism_that_differs_with_both_figures():
    goals = {"syncs": False, "total_time": True, "downtime": False}
    m = {"dirty_rate": 10000.0, "sync_interval": 0.2, "throttle": 0, "bulk_time": 1.0,
         "downtime_pages": 100, "stopped_cost": 20e-6}
    p = {"dirty_rate": 40000.0, "sync_interval": 0.21, "throttle": 0, "bulk_time": 1.05,
         "downtime_pages": 104, "stopped_cost": 21e-6}
    why = explain(goals, m, p)
    assert set(why) == {"syncs", "downtime"}
    assert why["syncs"] == ["pages newly dirtied per second as QEMU counts them at its syncs "
                            "(dirty-pages-rate): measured 10.0k/s, model 40.0k/s"]
    assert len(why["downtime"]) == 1 and "closest" in why["downtime"][0]
    assert "measured 21.0 us" not in why["downtime"][0]


def test_explain_says_when_dirtying_matches_the_send_rate():
    # 4104 B per page at 41.04 MB/s: 10000 pages/s; measured 9000 pages/s: 0.90 x
    goals = {"syncs": False}
    m = {"dirty_rate": 9000.0, "sync_interval": 0.2, "throttle": 0, "bulk_time": 1.0}
    p = {"dirty_rate": 12000.0, "sync_interval": 0.2, "throttle": 0, "bulk_time": 1.0}
    why = explain(goals, m, p, bandwidth=41_040_000)
    assert why["syncs"][0] == ("knife edge: the guest dirtied 9.0k/s (median dirty-pages-rate), "
                               "0.90 x the 10.0k/s max-bandwidth sends; model 12.0k/s")
    assert "measured 9.0k/s, model 12.0k/s" in why["syncs"][1]
    # 2x the send rate: no knife edge
    assert "knife" not in explain(goals, m, p, bandwidth=82_080_000 * 10)["syncs"][0]
