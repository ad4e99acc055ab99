"""Guest exits on the global lock, the loop's placement, and the kernel-side
stall harness: exact accounting on the virtual clock, real-time runs that
finish verified with exits enabled, and clear errors for bad parameters."""
import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty.bindings.guest_exits import GlobalLock, collect_stall, exit_timing
from pykvmdirty.errors import KvmDirtyError
from pykvmdirty.migration.loop_placement import LoopPlacement

MS = 1_000_000
US = 1_000


def model(holds, vcpus=1, rate=1000, service=10e-6, t1=100 * MS):
    gl = GlobalLock(vcpus, rate, service, virtual=True)
    for kind, a, b in holds:
        gl.hold(kind, a, b)
    gl.model(0, t1)
    return gl


# ---- the virtual model: a known hold gives a known wait ----

def test_one_hold_gives_the_rest_of_the_hold():
    # exits at 1.00, 2.01 ms are free; the next at 3.02 ms meets the hold
    # [2.5, 52.5) ms and waits until its end: 49.48 ms exactly
    gl = model([("iteration", 2500 * US, 52500 * US)])
    st = gl.stats()
    assert st["wait_max_ns"] == 52500 * US - 3020 * US
    assert st["wait_max_at_ns"] == 3020 * US
    assert st["waited_exits"] == 1
    assert st["wait_max_holder"] == 1  # iteration
    # then one exit per 1.01 ms of run time until 100 ms
    assert st["exits"] == 2 + 1 + int((100 * MS - (52510 * US + MS)) // (1010 * US)) + 1
    assert st["blocked_ns"] == st["wait_sum_ns"] + st["exits"] * 10 * US
    assert int(gl.histogram().sum()) == st["exits"]
    assert st["holds"]["iteration"] == dict(count=1, sum_ns=50 * MS, max_ns=50 * MS)


def test_back_to_back_iterations_serve_queued_exits_first():
    # FIFO: the exit that queued during the first iteration goes before the
    # second (which began after it arrived); the next exit waits that one out
    gl = model([("iteration", 2500 * US, 52500 * US), ("iteration", 52500 * US, 102500 * US)],
               t1=60 * MS)
    ev = gl.events()
    waits = ev[ev["type"] == 1]
    assert list(waits["at_ns"]) == [3020 * US, 53510 * US]
    assert list(waits["dur_ns"]) == [49480 * US, 102500 * US - 53510 * US]


def test_exits_queue_behind_each_other():
    # two vCPUs both arrive inside one hold: the second also waits for the
    # first one's service
    gl = model([("sync", 0, 10 * MS)], vcpus=2, rate=1000, service=100e-6, t1=10 * MS + 1)
    ev = np.sort(gl.events(), order="at_ns")
    w = ev[ev["type"] == 1]
    # vCPU 0 arrives at 0.5 ms, vCPU 1 at 1 ms: served at 10 ms and 10.1 ms
    assert [(int(a), int(d), int(v)) for a, d, v in zip(w["at_ns"], w["dur_ns"], w["vcpu"])] == [
        (500 * US, 9500 * US, 0), (1000 * US, 9100 * US, 1)]


def test_no_holds_no_waits_and_model_once():
    gl = model([])
    st = gl.stats()
    assert st["waited_exits"] == 0 and st["wait_max_ns"] == 0 and st["exits"] == 99
    with pytest.raises(KvmDirtyError):
        gl.model(0, 10)


def test_holds_must_be_in_order():
    gl = GlobalLock(1, 1000, 1e-5, virtual=True)
    gl.hold("sync", 10, 20)
    with pytest.raises(KvmDirtyError):
        gl.hold("sync", 15, 30)
    with pytest.raises(KvmDirtyError):
        gl.hold("sync", 40, 30)
    with pytest.raises(KvmDirtyError):
        gl.lock("iteration")  # a virtual lock records holds; it is not taken


@pytest.mark.parametrize("kw,msg", [
    (dict(exit_rate=-1, exit_service=1e-5), "exit_rate"),
    (dict(exit_rate=float("nan"), exit_service=1e-5), "exit_rate"),
    (dict(exit_rate=1000, exit_service=2e-3), "shorter than the time between"),
    (dict(exit_rate=1000, exit_service=-1), "exit_service"),
    (dict(exit_rate=True, exit_service=1e-5), "exit_rate"),
])
def test_bad_exit_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        exit_timing(**kw)
    with pytest.raises(ValueError, match=msg):
        kd.migrate(guest_size="64MiB", slots=1, **kw)


def test_bad_vcpus_and_loop_thread():
    with pytest.raises(ValueError, match="vcpus"):
        GlobalLock(0, 1000, 1e-5)
    with pytest.raises(ValueError, match="loop_thread"):
        kd.migrate(guest_size="64MiB", slots=1, loop_thread="vcpu-thread")
    with pytest.raises(ValueError, match="loop_thread"):
        LoopPlacement("main", None, lambda: 0, True)


def test_placement_nesting_records_one_hold():
    t = [0]
    gl = GlobalLock(1, 1000, 1e-5, virtual=True)
    p = LoopPlacement("migration-thread", gl, lambda: t[0], True)
    with p.sync():
        t[0] = 5
        with p.sync():  # a ring-full reap inside a sync
            t[0] = 7
        t[0] = 9
    with p.sync(ring=True):  # ring harvest: outside the lock
        t[0] = 20
    p.iteration_begin()  # migration-thread: iterations do not hold it
    t[0] = 30
    p.iteration_end()
    gl.model(0, 40)
    assert gl.stats()["holds"]["sync"] == dict(count=1, sum_ns=9, max_ns=9)
    assert gl.stats()["holds"]["iteration"]["count"] == 0


# ---- migrations: the two placements side by side ----

def _run(loop_thread, **kw):
    args = dict(guest_size="1GiB", slots=2, rate=20000, exit_rate=1000, bandwidth=0,
                loop_thread=loop_thread)
    args.update(kw)
    return kd.migrate(**args)


def test_iothread_waits_track_the_iteration_migration_thread_the_sync():
    io = _run("iothread")
    mt = _run("migration-thread")
    assert io.verified and mt.verified
    gi, gm = io.guest_impact, mt.guest_impact
    # iothread: the loop holds the lock for whole iterations, each at most the
    # sync plus the send up to the 50 ms cap (plus the 64-page check step)
    it = gi["holds"]["iteration"]
    assert it["count"] > 0 and gi["holds"]["sync"]["count"] == 0
    assert it["max_ns"] >= 50 * MS
    assert gi["wait_max_ns"] <= it["max_ns"] + 2 * gi["exit_service_ns"]
    assert gi["wait_max_ns"] >= 40 * MS and gi["longest_stall_holder"] == "iteration"
    # migration-thread: only syncs hold it, waits bounded by the longest sync
    sy = gm["holds"]["sync"]
    assert sy["count"] > 0 and gm["holds"]["iteration"]["count"] == 0
    assert gm["wait_max_ns"] <= sy["max_ns"] + 2 * gm["exit_service_ns"]
    assert gm["wait_max_ns"] < gi["wait_max_ns"]
    assert gm["slowdown_pct"] < gi["slowdown_pct"]
    assert "guest exits (iothread" in io.summary()
    d = io.as_dict()["guest_impact"]
    assert d["wait_p99_ns"] <= d["wait_max_ns"] and d["exits"] > 0


def test_ring_harvest_outside_the_lock():
    r = _run("migration-thread", backend="ring", strategy="ring", guest_size="256MiB")
    assert r.verified
    assert r.guest_impact["holds"]["sync"]["count"] == 0
    assert r.guest_impact["waited_exits"] == 0


def test_no_exits_no_section():
    r = kd.migrate(guest_size="64MiB", slots=1)
    assert r.guest_impact is None and r.as_dict()["guest_impact"] is None


@pytest.mark.parametrize("loop_thread", ["iothread", "migration-thread"])
def test_realtime_with_exits_finishes_verified(loop_thread):
    r = kd.migrate(guest_size="128MiB", slots=2, mode="realtime", rate=5000, exit_rate=500,
                   loop_thread=loop_thread, bandwidth=0, guest_baseline=0.1, max_passes=4)
    assert r.verified is True
    gi = r.guest_impact
    assert gi["exits"] > 0 and int(gi["wait_p99_ns"]) <= gi["wait_max_ns"]
    assert gi["progress_measured"] and gi["baseline_pages_per_s"] > 0
    held = gi["holds"]["iteration" if loop_thread == "iothread" else "sync"]
    assert held["count"] > 0


def test_realtime_idle_guest_still_exits():
    r = kd.migrate(guest_size="64MiB", slots=1, mode="realtime", workload="idle",
                   exit_rate=1000, loop_thread="iothread", guest_baseline=0, max_passes=2)
    assert r.verified is True and r.guest_impact["exits"] > 0


# ---- the kernel-side stall harness ----

def _flat_vm(backend="flat", pages=1 << 16, **kw):
    vm = kd.VM(backend, **kw)
    vm.set_user_memory_region(0, 0, pages * 4096, kd.MEM_LOG_DIRTY_PAGES)
    return vm


@pytest.mark.parametrize("collector", ["none", "get", "clear", "ring"])
def test_stall_harness_runs_on_the_emulator(collector):
    kw = dict(ring_entries=4096) if collector == "ring" else {}
    with _flat_vm("ring" if collector == "ring" else "flat", **kw) as vm:
        if collector == "clear":
            vm.enable_manual_protect()
        res, hist = collect_stall(vm, 0, collector, duration=0.1, period=0.01,
                                  guest_pages=1024, batch=16, chunk_pages=4096)
    # whole entries of 16 writes, and the part of one cut short by the stop
    assert 0 < 16 * res["guest_entries"] <= res["guest_pages_written"] \
        < 16 * (res["guest_entries"] + 1)
    assert int(hist.sum()) == res["guest_entries"]
    assert (res["collects"] > 0) == (collector != "none")
    assert res["call_max_ns"] <= res["collect_max_ns"] or collector == "none"


def test_stall_harness_bad_parameters():
    with _flat_vm() as vm:
        with pytest.raises(ValueError, match="collector"):
            collect_stall(vm, 0, "xchg", 0.1)
        with pytest.raises(ValueError, match="batch"):
            collect_stall(vm, 0, "get", 0.1, batch=0)
        with pytest.raises(ValueError, match="chunk_pages"):
            collect_stall(vm, 0, "clear", 0.1, chunk_pages=100)
        with pytest.raises(KvmDirtyError):
            collect_stall(vm, 0, "get", 0.1, guest_pages=1 << 20)  # more than the slot
        with pytest.raises(KvmDirtyError):
            collect_stall(vm, 3, "get", 0.1)  # no such slot


def test_stall_harness_on_the_real_kernel():
    ok, why = kd.backend_available("kvm")
    if not ok:
        pytest.skip("kvm backend unavailable: %s" % why)
    with _flat_vm("kvm", pages=1 << 18) as vm:
        res, hist = collect_stall(vm, 0, "get", duration=0.2, period=0.02, guest_pages=256)
    assert res["guest_pages_written"] > 0 and res["collects"] > 0
    assert res["stall_max_ns"] > 0


# ---- the stall tables (analysis/guest_stalls.py) ----

def test_placement_model_is_exact():
    from pykvmdirty.analysis.guest_stalls import placement_model
    # one vCPU, exits every 1 ms of run time, 10 us each; iterations of 1 ms
    # sync + 50 ms send back to back. iothread: the first exit (1 ms) meets
    # the first iteration and waits to its end at 51 ms (50 ms); FIFO lets it
    # go before the second iteration, so it leaves at 51.01 ms; the next exit
    # (52.01 ms) waits for the second iteration's end at 102 ms (49.99 ms),
    # and so on: every exit waits, p50 = p99 = the bucket of ~50 ms.
    r = placement_model(MS, 50 * MS, "iothread", False, 1, 1000, 10e-6, 0.05, 0.2)
    assert r["iteration_ns"] == 51 * MS
    assert r["wait_max_ns"] == 50 * MS
    assert r["exits"] == 4  # arrivals at 1, 52.01, 103.02, 154.03 ms (< 200 ms)
    assert 0.95 * 49.99 * MS <= r["wait_p50_ns"] <= 50 * MS
    # migration-thread: only the 1 ms syncs at 0, 51, 102, 153 ms hold it;
    # exits at 1, 2.01, ... never meet them except where they coincide
    m = placement_model(MS, 50 * MS, "migration-thread", False, 1, 1000, 10e-6, 0.05, 0.2)
    assert m["wait_max_ns"] <= MS and m["wait_max_ns"] < r["wait_max_ns"]
    ring = placement_model(MS, 50 * MS, "migration-thread", True, 1, 1000, 10e-6, 0.05, 0.2)
    assert ring["wait_max_ns"] == 0 and ring["slowdown_pct"] == 0


def test_kernel_model_get_hold_follows_the_cost_model():
    from pykvmdirty.costmodel import CostModel
    from pykvmdirty.analysis.guest_stalls import kernel_model
    c = CostModel()
    r = kernel_model(64, "get", 0.2, 0.05, 4096, 16, 1 << 18)
    dirty = int(min(4096, 1e9 / c.write_fault_ns * 0.05))
    want = int(c.ioctl_ns + (64 << 18) // 64 * c.word_ns + dirty * c.reprotect_ns
               + c.tlb_flush_ns)
    assert r["hold_max_ns"] == want
    # small CLEAR chunks hold the lock far less than one GET of the slot
    assert kernel_model(64, "clear", 0.2, 0.05, 4096, 16, 1 << 12)["hold_max_ns"] < want / 10


def test_tables_format_and_skip_with_reason():
    from pykvmdirty.analysis import guest_stalls as gs
    t = gs.loop_placement_table(sizes_gib=(0.25,), interfaces=("flat", "ring"), repeats=1,
                                window=0.1)
    rows = [r for r in t["rows"] if r["status"] == "ok"]
    assert len(rows) == 2 * 2 * 2  # interfaces x rate limits x placements
    text = gs.format_placement(t)
    assert "| 0.25 GiB | flat | none | iothread |" in text
    k = gs.kernel_side_table(sizes_gib=(0.25,), collectors=("get",), duration=0.1,
                             guest_pages=256)
    assert len(k["rows"]) == 2 and "model" in k["rows"][1]
    assert k["rows"][1]["real"] is None or k["rows"][1]["real"]["collects"] > 0
    assert "| 0.25 GiB | get |" in gs.format_kernel(k)


# ---- both placements side by side (migrate --loop-thread both) ----

def _scripted_placement(loop_thread):
    """One iteration [2.5, 52.5) ms whose sync is [2.5, 7.5) ms, played
    through LoopPlacement; its guest-impact section (1 vCPU, 1000 exits/s)."""
    from pykvmdirty.migration.guest_impact import summarize
    t = [0]
    gl = GlobalLock(1, 1000, 10e-6, virtual=True)
    p = LoopPlacement(loop_thread, gl, lambda: t[0], ring_outside=False)
    t[0] = 2500 * US
    p.iteration_begin()
    with p.sync():
        t[0] = 7500 * US
    t[0] = 52500 * US  # the send, up to the cap
    p.iteration_end()
    gl.model(0, 100 * MS)
    return summarize(gl, 0, 100 * MS, loop_thread, 0.05, dict(window_ns=100 * MS,
                                                              blocked_ns=0, rate=1000))


def test_side_by_side_known_hold_known_waits():
    from types import SimpleNamespace
    from pykvmdirty.migration.placements import PlacementComparison
    reports = {lt: SimpleNamespace(guest_impact=_scripted_placement(lt), iothread_resyncs=0,
                                   npasses=1, total_ns=100 * MS, downtime_ns=0, verified=True,
                                   as_dict=dict)
               for lt in ("iothread", "migration-thread")}
    cmp = PlacementComparison(reports, "virtual")
    io, mt = cmp.rows()
    # the exit at 3.02 ms (exits at 1.00, 2.01 ms are free) meets the hold:
    # iothread holds the whole iteration, migration-thread only the sync
    assert (io["loop_thread"], mt["loop_thread"]) == ("iothread", "migration-thread")
    assert io["wait_max_ns"] == 52500 * US - 3020 * US
    assert mt["wait_max_ns"] == 7500 * US - 3020 * US
    assert io["longest_stall_ns"] == io["wait_max_ns"] + 10 * US
    assert io["longest_stall_at_ns"] == mt["longest_stall_at_ns"] == 3020 * US
    assert (io["longest_stall_holder"], mt["longest_stall_holder"]) == ("iteration", "sync")
    assert io["waited_exits"] == mt["waited_exits"] == 1
    assert (io["longest_loop_hold_ns"], mt["longest_loop_hold_ns"]) == (50 * MS, 5 * MS)
    assert io["slowdown_pct"] > mt["slowdown_pct"] > 0
    text = cmp.text()
    assert "49.480" in text and "4.480" in text and "iteration" in text
    d = cmp.as_dict()
    assert d["loop_thread"] == "both" and len(d["side_by_side"]) == 2


def test_both_placements_equal_the_separate_runs():
    args = dict(guest_size="256MiB", slots=2, rate=20000, exit_rate=1000, bandwidth=64 << 20)
    both = kd.migration.migrate_both_placements(**args)
    assert both.verified is True and both.mode == "virtual"
    for row in both.rows():
        alone = kd.migrate(loop_thread=row["loop_thread"], **args)
        gi = alone.guest_impact
        for k in ("exits", "wait_p99_ns", "wait_max_ns", "longest_stall_at_ns", "pages_per_s"):
            assert row[k] == gi[k], (row["loop_thread"], k)
        assert row["iothread_resyncs"] == alone.iothread_resyncs
    io, mt = both.rows()
    assert io["iothread_resyncs"] > 0 and mt["iothread_resyncs"] == 0
    assert io["wait_max_ns"] > mt["wait_max_ns"]
    assert "identical settings" in both.summary()


@pytest.mark.parametrize("kw, msg", [
    (dict(loop_thread="iothread", exit_rate=1000), "do not pass loop_thread"),
    (dict(exit_rate=0), "exit_rate must be > 0"),
    (dict(exit_rate=1000, sink="tcp://127.0.0.1:1"), "sink must be"),
])
def test_both_placements_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        kd.migration.migrate_both_placements(guest_size="64MiB", slots=1, **kw)


@pytest.mark.parametrize("argv, msg", [
    (["--loop-thread", "vcpu"], "--loop-thread must be one of iothread, migration-thread, both"),
    (["--loop-thread", "both"], "give --exit-rate > 0"),
    (["--loop-thread", "both", "--exit-rate", "nan"], "give --exit-rate > 0"),
    (["--loop-thread", "both", "--exit-rate", "100", "--plot", "x.png"], "--plot"),
    (["--loop-thread", "both", "--exit-rate", "100", "--sink", "tcp://127.0.0.1:1"], "--sink"),
])
def test_cli_loop_thread_bad_values(argv, msg, capsys):
    from pykvmdirty.cli import main
    rc = main(["migrate", "--guest-size", "64MiB", "--slots", "1", "--quiet"] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and msg in err and "Traceback" not in err


def test_cli_loop_thread_both_json(tmp_path, capsys):
    import json
    from pykvmdirty.cli import main
    out = tmp_path / "both.json"
    rc = main(["migrate", "--guest-size", "256MiB", "--slots", "2", "--quiet", "--exit-rate",
               "1000", "--loop-thread", "both", "--bandwidth", "64MiB", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "== both placements, same settings ==" in text and "exit wait p99 ms" in text
    d = json.loads(out.read_text())
    assert [r["loop_thread"] for r in d["side_by_side"]] == ["iothread", "migration-thread"]
    assert set(d["runs"]) == {"iothread", "migration-thread"}


def test_iothread_resyncs_at_every_iteration():
    # QEMU 2010: every iteration syncs the dirty log; here the time cap and
    # the rate limit begin new iterations inside a pass, each with a sync
    io = _run("iothread", guest_size="256MiB")
    mt = _run("migration-thread", guest_size="256MiB")
    assert io.verified and mt.verified
    assert io.total("time_cap_exits") > 0
    assert io.iothread_resyncs >= io.total("time_cap_exits") - io.passes[-1].time_cap_exits
    assert mt.iothread_resyncs == 0
    assert "dirty-log syncs at iterations" in io.summary()
