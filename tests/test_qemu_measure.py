"""The model's inputs measured from a real run's samples (pykvmdirty/qemu/measure.py)
and the per-goal diagnosis (diagnose.py), on hand-made samples with hand-computed
results; and the model's phase switch (profile.py) after the bulk pass."""
from types import SimpleNamespace

import pytest

from pykvmdirty.qemu.diagnose import explain
from pykvmdirty.qemu.measure import fault_rate, iter_fault_rate, run_costs
from pykvmdirty.qemu.profile import GuestModel, Platform, QemuSettings, predict


def S(t, gp, sync=1, normal=0, dup=0, xfer=0, status="active", thr=0):
    return dict(t=t, guest_pages=gp, dirty_sync_count=sync, normal=normal, duplicate=dup,
                transferred=xfer, status=status, throttle=thr)


def test_fault_rate_measures_the_whole_sweep_between_the_first_two_counter_changes():
    # counter moves between 0.2/0.3 (midpoint 0.25: the partial sweep) and 0.5/0.7
    # (midpoint 0.6): one whole sweep of 1000 pages in 0.35 s
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(0.5, 1000),
                                 S(0.7, 2000)])
    assert fault_rate(r, 1000) == pytest.approx(1000 / 0.35)
    # one change only (midpoint 0.25), no other by the last sample at 0.5: the sweep
    # begun at 0.25 took more than 0.25 s -> at most 4000/s
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(0.5, 1000)])
    assert fault_rate(r, 1000) == pytest.approx(4000)
    # ... and with the last sample at 1.25: at most 1000 pages/s
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.2, 0), S(0.3, 1000), S(1.25, 1000)])
    assert fault_rate(r, 1000) == pytest.approx(1000)
    # the change at the very end (< 0.1 s before the last sample): npages / time to it
    r = SimpleNamespace(samples=[S(0.1, 0), S(0.4, 0), S(0.45, 1000)])
    assert fault_rate(r, 1000) == pytest.approx(1000 / 0.425)
    # no change while active: at most 1000 pages in 0.2 s
    assert fault_rate(SimpleNamespace(samples=[S(0.1, 5), S(0.2, 5)]), 1000) == \
        pytest.approx(5000)
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


def test_run_costs_per_phase():
    # bulk pass (sync 1): 0.1 s for 1000 normal pages at 40 MB/s (not rate limited)
    #   -> 100 us each; 0.1 s for 10000 zero pages alone -> 10 us each.
    # after it (sync 2): 0.1 s for 2000 normal pages, 0.1 s for 22000 (900 MB/s, rate
    #   limited at 1 GiB/s); the iterative phase takes the fastest: 0.1 / 22000.
    bw = 1 << 30
    samples = [S(0.0, 0, 1, 0, 0, 0), S(0.1, 0, 1, 1000, 0, 4e6),
               S(0.2, 0, 1, 1000, 10000, 4.1e6), S(0.3, 0, 2, 3000, 10000, 12.3e6),
               S(0.4, 0, 2, 25000, 10000, 102.3e6)]
    # with the VM stopped: at most the fastest running interval's 0.1 / 22000
    r = SimpleNamespace(samples=samples, setup_time=0.03)
    p, how = run_costs(r, Platform(stopped_normal_page_s=1e-3), bw)
    assert p.normal_page_s == pytest.approx(100e-6)
    assert p.zero_page_s == pytest.approx(10e-6)
    assert p.normal_page_s_iter == pytest.approx(0.1 / 22000)
    assert p.stopped_normal_page_s == pytest.approx(0.1 / 22000)
    assert p.setup_s == 0.03
    assert how == ["normal (bulk)", "zero (bulk)", "normal (fastest) (after)",
                   "stopped (fastest running)", "setup"]
    # bulk pass rate limited throughout (1000 pages at 41 MB/s of a 40 MB/s limit):
    # its fastest interval bounds the cost; nothing after it: the calibration's cost
    r = SimpleNamespace(samples=samples[:3], setup_time=0.0)
    p, how = run_costs(r, Platform(normal_page_s=7e-6, stopped_normal_page_s=5e-6), 40e6)
    assert p.normal_page_s == pytest.approx(100e-6)
    assert p.normal_page_s_iter == 7e-6
    assert p.stopped_normal_page_s == 5e-6      # already below the bound
    assert how == ["normal (fastest) (bulk)", "zero (bulk)"]


def test_the_guest_switches_to_its_iterative_fault_rate_after_the_bulk_pass():
    # a-b over 1000 pages: 0.01 s at 1000 first writes/s = 10 pages in the bulk pass;
    # once the loop marks the bulk pass done (its second sync), 0.01 s at 50000/s =
    # 500 more; the status page is always dirty.
    import numpy as np
    g = GuestModel("ab", 2048, 256, 1000, rate=0, fault_rate=1000, fault_rate_iter=50000)
    log, nz = np.zeros(2048, bool), np.zeros(2048, bool)
    g.step(log, nz, 0.01, 0)
    assert log[256:1256].sum() == 10 and log[256:266].all()
    g.bulk_done = True
    g.step(log, nz, 0.01, 0)
    assert log[256:1256].sum() == 510 and log[256:766].all()
    # without an iterative rate the bulk rate stays; a 50 % throttle halves it
    g = GuestModel("ab", 2048, 256, 1000, rate=0, fault_rate=1000)
    g.bulk_done = True
    log[:] = False
    g.step(log, nz, 0.02, 50)
    assert log[256:1256].sum() == 10


def test_the_loop_marks_the_bulk_pass_done_at_its_second_sync():
    plat = Platform(normal_page_s=1e-6, zero_page_s=0, stopped_normal_page_s=0,
                    downtime_overhead_s=0, setup_s=0, sync_s=0)
    g = GuestModel("idle", 64, 0, 0, rate=0)
    r = predict(g, QemuSettings(bandwidth=0), plat)
    assert r.dirty_sync_count == 2 and g.bulk_done


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
