"""The QEMU profile (pykvmdirty/qemu/profile.py) on small cases whose iterations
are worked out by hand in the comments: windows, thresholds, syncs, bytes."""
import pytest

from pykvmdirty.qemu.profile import (BIOS_PAGES, PAGE_RECORD, ROM_PAGES, ZERO_RECORD,
                                     GuestModel, Platform, QemuSettings, predict)

EOS = 8
# per-page times: normal 1 us while running, 1 ms in the downtime, zero pages free
PLAT = Platform(normal_page_s=1e-6, zero_page_s=0.0, stopped_normal_page_s=1e-3,
                downtime_overhead_s=0.0, setup_s=0.0, sync_s=0.0)
BUDGET_10_PAGES = 10 * PAGE_RECORD * 10       # bytes/s: a 100 ms window holds 10 pages


def test_idle_guest_unlimited_bandwidth():
    # 64 guest pages + 16 bios + 32 rom = 112 pages; non-zero: params, status, bios = 18.
    # sync 1 at t=0; one round sends everything (18 x 1 us) and finds nothing more;
    # pending 0 -> completion: sync 2 finds the status page -> downtime 1 page = 1 ms.
    g = GuestModel("idle", 64, 0, 0, rate=0)
    r = predict(g, QemuSettings(bandwidth=0), PLAT)
    assert r.status == "completed"
    assert r.dirty_sync_count == 2
    assert (r.normal, r.duplicate) == (18 + 1, 112 - 18)
    assert r.transferred == 18 * PAGE_RECORD + 94 * ZERO_RECORD + EOS + PAGE_RECORD + EOS
    assert r.downtime == pytest.approx(1e-3)
    assert r.total_time == pytest.approx(18e-6 + 1e-3)


def test_idle_guest_rate_limited_windows():
    # budget 41040 bytes per window. Window 1: page 0 (zero, 9), pages 1-2 (4104 each),
    # pages 3-63 (61 zero = 549) = 8766, then bios pages: 8766 + 4104 j > 41040 first at
    # j = 8 -> 41598 bytes sent, rate limited, wait to t = 0.1: bandwidth = 41606 / 0.1,
    # threshold = 0.3 x that = 124818 B. Pending: 8 bios + 32 rom = 163840 B >= threshold:
    # iterate, 8 x 4104 + 32 x 9 = 33120 B, the round ends empty; pending 0 < threshold:
    # sync 2 finds the status page, 4096 B < threshold: completion, sync 3 (nothing new),
    # the status page in the downtime.
    g = GuestModel("idle", 64, 0, 0, rate=0)
    r = predict(g, QemuSettings(bandwidth=BUDGET_10_PAGES, downtime_limit=0.3), PLAT)
    assert r.dirty_sync_count == 3
    assert [it["pending"] for it in r.iterations] == [112, 1, 1]
    assert r.transferred == 41598 + EOS + 33120 + EOS + PAGE_RECORD + EOS
    assert (r.normal, r.duplicate) == (19, 94)
    assert r.total_time == pytest.approx(0.1 + 8e-6 + 1e-3)
    assert r.downtime == pytest.approx(1e-3)


def test_ab_guest_syncs_when_pending_falls_below_the_threshold():
    # a-b over pages 8..17 of 64, rewriting all 10 between any two syncs.
    # W1: p0 9 + p1,p2 8208 + p3-7 45 = 8262, range pages 8262 + 4104 j > 41040 at j = 8
    #     -> 41094 B, t = 0.1, threshold = 0.3 x 411020 = 123306 B.
    # pending p16-17, p18-63 (zero), bios 16, rom 32 = 96 pages >= threshold: W2 sends
    #     p16,p17 (8208) + 46 zero (414) + 8 bios (32832) = 41454 B, t = 0.2,
    #     threshold = 0.3 x 414620 = 124386 B.
    # pending 8 bios + 32 rom = 163840 >= threshold: sends 33120 B, round ends empty.
    # pending 0 < threshold: sync 2 -> 10 range pages + status = 45056 < threshold:
    # completion, sync 3 (nothing new: the guest has not run since), 11 pages in the
    # downtime = 11 ms.
    g = GuestModel("ab", 64, 8, 10, rate=1e9, fault_rate=1e9, written_before=10)
    r = predict(g, QemuSettings(bandwidth=BUDGET_10_PAGES, downtime_limit=0.3), PLAT)
    assert r.dirty_sync_count == 3
    assert [it["pending"] for it in r.iterations] == [112, 11, 11]
    assert r.transferred == 41094 + EOS + 41454 + EOS + 33120 + EOS + 11 * PAGE_RECORD + EOS
    assert r.normal == 2 + 10 + BIOS_PAGES + 11
    assert r.duplicate == 1 + 5 + 46 + ROM_PAGES
    assert r.downtime == pytest.approx(11e-3)


def test_no_pass_limit_a_loop_that_cannot_converge_runs_to_the_timeout():
    # 1000 pages rewritten continuously, 10 pages per window: never under the threshold
    g = GuestModel("ab", 2048, 256, 1000, rate=1e9, fault_rate=1e9, written_before=1000)
    r = predict(g, QemuSettings(bandwidth=BUDGET_10_PAGES, downtime_limit=0.3, timeout=30),
                PLAT)
    assert r.status == "timeout"
    assert r.total_time >= 30
    assert r.throttle_max == 0


def test_auto_converge_rule():
    # 200 pages rewritten continuously, 10 pages per window, threshold 30 pages: a sync
    # every ~17 windows. A throttle check happens only at a sync more than 1 s after
    # the previous check, each increase takes two "high" checks (dirtied > 50 % of
    # transferred): 20, then +10, at most 99; a guest this fast stays unconverged.
    g = GuestModel("ab", 2048, 256, 200, rate=1e9, fault_rate=1e9, written_before=200)
    r = predict(g, QemuSettings(bandwidth=BUDGET_10_PAGES, downtime_limit=0.3,
                                auto_converge=True, timeout=40), PLAT)
    assert r.status == "timeout"
    steps = [(it["t"], it["throttle"]) for it in r.iterations]
    seen = [th for _, th in steps]
    changes = [(t, th) for (t, th), (_, prev) in zip(steps[1:], steps) if th != prev]
    assert changes and changes[0][1] == 20
    assert all(b - a == 10 or b == 99 for (_, a), (_, b) in zip(changes, changes[1:]))
    times = [t for t, _ in changes]
    assert all(b - a > 2.0 for a, b in zip(times, times[1:]))   # two checks, > 1 s apart
    assert times[0] > 2.0
    assert max(seen) == r.throttle_max == 99
    assert [th for _, th in changes][:3] == [20, 30, 40]


def test_migrate_profile_qemu_entry_points(capsys):
    import pykvmdirty as kd
    from pykvmdirty.cli import main
    p = kd.migrate(guest_size="256MiB", workload="hotspot", rate=20000, profile="qemu")
    assert p.status == "completed" and p.dirty_sync_count >= 2
    assert p.normal + p.duplicate >= (256 << 20) // 4096
    with pytest.raises(ValueError, match="profile"):
        kd.migrate(profile="xen")
    with pytest.raises(ValueError, match="zipf"):
        kd.migrate(workload="zipf", profile="qemu")
    with pytest.raises(ValueError, match="at least"):
        kd.migrate(guest_size="64MiB", workload="uniform", profile="qemu")
    assert main(["migrate", "--profile", "qemu", "--guest-size", "256MiB", "--workload",
                 "migration-test", "--rate", "30000"]) == 0
    assert "bitmap syncs" in capsys.readouterr().out
    assert main(["migrate", "--profile", "qemu", "--workload", "zipf"]) == 2
    assert "zipf" in capsys.readouterr().err


def test_qemu_command_rejects_a_bad_cell_in_one_line(capsys):
    from pykvmdirty.cli import main
    assert main(["qemu", "--workload", "uniform", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "rate > 0" in err and "Traceback" not in err
