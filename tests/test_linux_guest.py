"""The Linux guest: the initramfs it boots (built here from busybox-static and
stress-ng), its serial console protocol, a short boot under TCG, a short
migration (slow set), and the workload model (a measured trace) replayed by
the loop. The QEMU parts skip with the reason where the kernel, busybox,
stress-ng, QEMU or qemu.qmp is missing (apt-get install -y
--no-install-recommends linux-image-cloud-amd64 busybox-static stress-ng
qemu-system-x86)."""
import asyncio
import os
import shutil

import numpy as np
import pytest
from conftest import is_qemu

from pykvmdirty.qemu.linux import initramfs, workloads
from pykvmdirty.qemu.linux.guest import Console

MIB = 1 << 20


def _missing():
    why = initramfs.missing()
    if why:
        return why
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    try:
        import qemu.qmp  # noqa: F401
    except ImportError:
        return "the qemu.qmp library is not installed"
    return None


MISSING = _missing()
needs_guest = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def parse_cpio(data):
    """{name: (mode, bytes)} of a newc archive."""
    out, off = {}, 0
    while True:
        assert data[off:off + 6] == b"070701", "bad magic at %d" % off
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off: off + size]
        off += size
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


# -- the initramfs -------------------------------------------------------------------------

@pytest.mark.skipif(initramfs.missing() is not None, reason=str(initramfs.missing()))
def test_initramfs_holds_init_busybox_stress_ng_and_its_libraries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = initramfs.initramfs_path()
    assert path.startswith(str(tmp_path))
    with open(path, "rb") as f:
        data = f.read()
    files = parse_cpio(data)
    mode, init = files["init"]
    assert mode == 0o100755 and init.startswith(b"#!/bin/busybox sh")
    for name in workloads.WORKLOADS:
        assert ("    %s)" % name).encode() in init
    with open("/bin/busybox" if os.path.exists("/bin/busybox") else "/usr/bin/busybox",
              "rb") as f:
        assert files["bin/busybox"][1] == f.read()
    assert "usr/bin/stress-ng" in files
    for lib in initramfs.shared_libraries("/usr/bin/stress-ng"):
        name = lib.lstrip("/")
        assert name in files, name
        m, body = files[name]
        if m == 0o120777:      # a link to the library's real path, which is there too
            assert body.decode().lstrip("/") in files
    # deterministic: the same inputs give the same bytes, and the cache is reused
    assert initramfs.build() == data
    mtime = os.stat(path).st_mtime_ns
    assert initramfs.initramfs_path() == path and os.stat(path).st_mtime_ns == mtime


def test_a_bad_kernel_path_is_refused(tmp_path):
    with pytest.raises(initramfs.LinuxGuestError, match="no such file"):
        initramfs.find_kernel(str(tmp_path / "nope"))
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"\0" * 4096)
    with pytest.raises(initramfs.LinuxGuestError, match="not an x86 Linux kernel"):
        initramfs.find_kernel(str(bogus))


def test_workloads_by_name():
    with pytest.raises(ValueError, match="unknown Linux guest workload 'nope'"):
        workloads.check("nope")
    vm = [n for n in workloads.WORKLOADS if n.startswith("vm-")]
    assert len({n.rsplit("-", 1)[0] for n in vm}) >= 3          # methods
    assert len({n.rsplit("-", 1)[1] for n in vm}) >= 2          # sizes
    for name in ("idle", "pagecache", "sort", "gzip"):
        assert "pkd-ready" in workloads.check(name)


def test_linux_config_checks_the_workload_by_guest():
    from pykvmdirty.qemu.config import QemuConfig
    QemuConfig(guest="linux", workload="pagecache", guest_size=256 * MIB)
    with pytest.raises(ValueError, match="unknown Linux guest workload 'ab'"):
        QemuConfig(guest="linux", workload="ab")
    with pytest.raises(ValueError, match="workload must be one of"):
        QemuConfig(workload="pagecache")
    with pytest.raises(ValueError, match="guest must be one of"):
        QemuConfig(guest="windows")


def test_console_reads_complete_lines_only(tmp_path):
    p = tmp_path / "serial"
    c = Console(str(p))
    assert c.poll().state == "booting"          # no file yet
    p.write_bytes(b"[    0.1] noise\npkd-boot 1.2 workload=idle\npkd-ready\npkd-tick 1\npkd-ti")
    st = c.poll()
    assert (st.state, st.pages, st.first_tick) == ("running", 1, 1)
    with open(p, "ab") as f:
        f.write(b"ck 2\r\npkd-work 7\n")
    st = c.poll()
    assert (st.pages, st.passes, st.first_tick) == (2, 7, 1)
    with open(p, "ab") as f:
        f.write(b"pkd-error unknown workload x\n")
    c.poll()
    assert c.errors == ["unknown workload x"]


# -- QEMU ----------------------------------------------------------------------------------

@needs_guest
def test_linux_guest_boots_to_its_workload_under_tcg():
    """The kernel reaches /init, the workload starts and the heartbeat moves;
    the process is gone afterwards."""
    from pykvmdirty.qemu.linux.guest import LinuxProcess, boot_files

    async def main():
        kernel, initrd = boot_files(None, "idle")
        p = LinuxProcess("source", kernel, initrd, "idle", 256 * MIB, "tcg")
        try:
            await p.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            st = await p.status()
            while st.pages < 2 and loop.time() < deadline:
                await asyncio.sleep(0.1)
                st = await p.status()
            return p.pid, st, p.console.lines
        finally:
            await p.close()

    pid, st, lines = asyncio.run(main())
    assert st.pages >= 2, lines
    assert "pkd-ready" in lines and any(ln.startswith("pkd-boot") for ln in lines)
    assert not is_qemu(pid)


@needs_guest
def test_an_unknown_workload_never_reaches_qemu():
    from pykvmdirty.qemu.config import QemuConfig
    with pytest.raises(ValueError, match="unknown Linux guest workload"):
        QemuConfig(guest="linux", workload="vm-flip-1G")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PYKVMDIRTY_SLOW", "") in ("", "0"),
                    reason="a Linux migration under TCG (~15 s): set PYKVMDIRTY_SLOW=1")
@needs_guest
def test_linux_migration_completes_and_the_guest_runs_on():
    """A 256 MiB Linux guest running stress-ng migrates; the destination's
    heartbeat continues the source's; the RAM comparison is reported (pages
    QEMU 7.2 under TCG lost are counted, not hidden)."""
    from pykvmdirty.qemu.config import QemuConfig
    from pykvmdirty.qemu.linux.runner import run_linux_migration
    r = run_linux_migration(QemuConfig(guest="linux", workload="vm-flip-16M", guest_size=256 * MIB,
                                       accel="tcg", bandwidth=1 << 30, warmup=2.0,
                                       timeout=60))
    assert r.status == "completed"
    v = r.verification
    assert v["destination_runs"] and 1 <= v["destination_first_tick"] - v["source_last_tick"] <= 2
    assert v["pages_compared"] == 256 * MIB // 4096
    assert v["tcg_lost_writes"] == (v["differing_pages"] > 0)
    assert r.normal > 0 and r.dirty_sync_count >= 2
    assert not [p for p in r.pids if is_qemu(p)]


def test_snapshot_diff_finds_exactly_the_changed_pages(tmp_path):
    from pykvmdirty.qemu.linux import memory
    rng = np.random.default_rng(3)
    a = np.zeros((20000, 512), dtype=np.uint64)
    a[rng.choice(20000, 3000, replace=False)] = 7
    b = a.copy()
    changed = np.sort(rng.choice(20000, 500, replace=False))
    b[changed, rng.integers(0, 512, changed.size)] += np.uint64(1)
    pa, pb = tmp_path / "a", tmp_path / "b"
    a.tofile(pa)
    b.tofile(pb)
    got = memory.changed_pages(memory.pages(str(pa)), memory.pages(str(pb)))
    assert got.tolist() == changed.tolist()
    assert set(memory.nonzero_pages(memory.pages(str(pa))).tolist()) == \
        set(np.flatnonzero(a.any(axis=1)).tolist())


# -- the workload model: a trace with a prefill and a repeat --------------------------------

def _model_trace(**meta):
    from pykvmdirty.migration.trace import Trace
    # interval 0: the memory at the start; 1 and 2: the measured windows
    t = np.array([0, 100, 200], dtype=np.uint64)
    offsets = np.array([0, 3, 4, 6], dtype=np.uint64)
    gfns = np.array([1, 2, 3, 10, 11, 12], dtype=np.uint64)
    return Trace(64, t, offsets, gfns, np.zeros(6, np.uint16), meta)


def test_trace_prefill_is_written_at_setup_and_repeat_replays_the_windows():
    from pykvmdirty.migration.trace import TraceWorkload

    class FakeVM:
        vcpus = 1
    calls = []
    w = TraceWorkload(FakeVM(), _model_trace(prefill=1, repeat={"from": 1, "period_ns": 250}),
                      lambda v, g, value, t: calls.append((g.tolist(), value, t)))
    assert calls == [([1, 2, 3], 1, 0)] and w.prefilled == 3
    calls.clear()
    assert w.advance(0, 150) == 1            # window 1 (t 100)
    assert w.advance(150, 340) == 2          # window 2 (t 200); its repeat at 350 not yet
    assert w.advance(340, 360) == 1          # window 1 again at 100 + 250
    # pages: window 2 at 450; 1 and 2 at 600, 700; 1 and 2 at 850, 950
    assert w.advance(360, 1000) == 2 + 3 + 3
    assert [c[0] for c in calls[:3]] == [[10], [11, 12], [10]]
    assert w.writes == 12
    # without the meta keys a trace replays once, as before
    calls.clear()
    w = TraceWorkload(FakeVM(), _model_trace(), lambda v, g, value, t: calls.append(g.tolist()))
    assert w.advance(0, 10_000) == 6 and calls == [[1, 2, 3, 10, 11, 12]]
    assert w.advance(10_000, 20_000) == 0


@pytest.mark.parametrize("meta, match", [
    (dict(prefill=4), "meta prefill must be an integer in \\[0, 3\\]"),
    (dict(prefill="1"), "meta prefill"),
    (dict(prefill=1, repeat={"from": 0, "period_ns": 500}), "meta repeat"),
    (dict(repeat={"from": 1, "period_ns": 100}), "meta repeat"),
    (dict(repeat=[1, 250]), "meta repeat"),
])
def test_trace_model_keys_are_checked(meta, match):
    from pykvmdirty.migration.trace import TraceError
    with pytest.raises(TraceError, match=match):
        _model_trace(**meta)


def test_model_trace_spreads_windows_and_keeps_hot_pages_in_every_sub_interval():
    from pykvmdirty.qemu.linux.model import build_trace, working_set
    hot = np.arange(10, dtype=np.uint64)
    sets = [np.concatenate([hot, np.array([100 + i], dtype=np.uint64)]) for i in range(10)]
    tr = build_trace(1000, np.arange(50, dtype=np.uint64), sets, [0.1] * 10, {"workload": "x"})
    assert tr.meta["prefill"] == 1 and tr.meta["hot_pages"] == 10
    assert tr.meta["repeat"] == {"from": 1, "period_ns": 1_000_000_000}
    assert tr.intervals == 1 + 10 * 5                 # 100 ms windows in 20 ms steps
    _, first, _ = tr.interval(0)
    assert first.tolist() == list(range(50))
    for i in range(1, tr.intervals):
        _, g, _ = tr.interval(i)
        assert set(hot.tolist()) <= set(g.tolist())   # hot: in every sub-interval
    cold = [g for i in range(1, tr.intervals) for g in tr.interval(i)[1].tolist() if g >= 100]
    assert sorted(cold) == list(range(100, 110))       # each cold page once
    assert working_set(sets, 0.1)[:2] == [[0.1, 11.0], [0.2, 12.0]]


@pytest.mark.parametrize("argv, match", [
    (["--workload", "nope"], "unknown Linux guest workload 'nope'"),
    ([], "--guest linux needs one --calibration FILE"),
    (["--interface", "ring"], "--interface ring needs KVM"),
    (["--calibration", "CAL", "--kernel", "/nonexistent"], "--kernel /nonexistent: no such file"),
    (["--calibration", "CAL", "--model", "/etc/hostname"], "not a pykvmdirty trace"),
    (["--calibration", "CAL", "--grid", "heldout"], "--grid with --guest linux"),
])
def test_linux_cli_bad_input_is_one_line(argv, match, tmp_path, capsys):
    """Each refused before any QEMU starts, one line, status 2."""
    from pykvmdirty.cli import main
    from pykvmdirty.qemu import calibration
    cal = tmp_path / "cal.json"
    c = calibration.from_file_dict(_tcg_calibration())
    c.save(str(cal))
    argv = [str(cal) if a == "CAL" else a for a in argv]
    if initramfs.missing() and "--kernel" not in argv and "--calibration" in argv:
        pytest.skip(initramfs.missing())
    rc = main(["qemu", "--guest", "linux", "--json", str(tmp_path / "x.json")] + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert match in err


def _tcg_calibration():
    import json
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "docs", "qemu_calibration_tcg.json")) as f:
        return json.load(f)


def test_trace_speed_slows_the_replay_and_is_checked():
    from pykvmdirty.migration.trace import TraceError, TraceWorkload

    class FakeVM:
        vcpus = 1
    calls = []
    w = TraceWorkload(FakeVM(), _model_trace(speed=0.5),
                      lambda v, g, value, t: calls.append(g.tolist()))
    assert w.advance(0, 150) == 3            # trace time 75: interval 0 (t 0) only
    assert w.advance(150, 250) == 1          # trace time 125: interval 1 (t 100)
    assert w.advance(250, 399) == 0          # trace time 199.5
    assert w.advance(399, 400) == 2          # trace time 200: interval 2
    for bad in (0, -1, 5, "1", True):
        with pytest.raises(TraceError, match="meta speed"):
            _model_trace(speed=bad)


def test_guest_speed_factor_arithmetic():
    """A hand-made calibration sample: the replay sends 40,000 normal pages
    plus 20,000 per unit of speed; the run sent 45,000: the factor is 0.25."""
    from pykvmdirty.qemu.linux.predict import fit_speed
    s, tried = fit_speed(45_000, lambda x: 40_000 + 20_000 * x)
    assert s == pytest.approx(0.25, rel=2e-3)
    assert tried[0][0] == 4.0 and len(tried) == 2 + 12
    # outside what the replay can send: the bounds, said by the tries
    assert fit_speed(10**9, lambda x: 40_000 + 20_000 * x)[0] == 4.0
    assert fit_speed(1, lambda x: 40_000 + 20_000 * x)[0] == 1 / 64


def test_trace_speed_follows_the_senders_waiting_share():
    """speed while the sender works, speed_idle while it waits: an interval
    the sender spent half waiting runs at their mean."""
    from pykvmdirty.migration.trace import TraceError, TraceWorkload

    class FakeVM:
        vcpus = 1
    idle = [0]
    w = TraceWorkload(FakeVM(), _model_trace(speed=0.5, speed_idle=1.0),
                      lambda v, g, value, t: None, idle_ns=lambda: idle[0])
    assert w.advance(0, 80) == 3             # never waited: trace time 40
    idle[0] = 40
    w.advance(80, 160)                       # half waited: speed 0.75, trace time 40 + 60
    assert w._clock == pytest.approx(100)
    idle[0] = 140
    w.advance(160, 260)                      # all waited: speed 1, trace time 200
    assert w._clock == pytest.approx(200)
    # without the loop's clock the replay runs at speed
    w2 = TraceWorkload(FakeVM(), _model_trace(speed=0.5, speed_idle=1.0),
                       lambda v, g, value, t: None)
    w2.advance(0, 100)
    assert w2._clock == pytest.approx(50)
    for bad in (0, 5, True):
        with pytest.raises(TraceError, match="meta speed_idle"):
            _model_trace(speed=0.5, speed_idle=bad)


def test_two_point_speed_fit_arithmetic(monkeypatch):
    """A hand-made loop: unlimited, it sends 40,000 normal pages + 20,000
    per unit of S_busy (its sender never waits); at the second calibration
    cell 40,000 + 10,000 S_busy + 30,000 S_idle. Runs that sent 45,000 and
    73,500: S_busy 0.25, then S_idle the idle speed tried nearest 1.0."""
    from pykvmdirty.qemu.config import QemuConfig
    from pykvmdirty.qemu.linux import predict as lp

    class Report:
        status, dirty_sync_count = "completed", 5

        def __init__(self, n):
            self.n = n

        def total(self, key):
            return self.n if key == "pages_sent" else 0
    seen = []

    def fake_loop(config, cal, trace):
        return config, trace.meta["speed"], trace.meta["speed_idle"]

    def fake_migrate(cfg, sink):
        config, s, s_idle = cfg
        seen.append((config.bandwidth, s, s_idle))
        if config.bandwidth == lp.UNLIMITED:
            return Report(40_000 + 20_000 * s)
        return Report(40_000 + 10_000 * s + 30_000 * s_idle)
    monkeypatch.setattr(lp, "loop_config", fake_loop)
    monkeypatch.setattr(lp, "migrate", fake_migrate)
    base = QemuConfig(guest="linux", workload="vm-flip-16M", guest_size=256 << 20)
    busy_cfg, idle_cfg = lp.calibration_config(base), lp.idle_calibration_config(base)
    trace = _model_trace()
    run = dict(normal=45_000, dirty_sync_count=4, status="completed")
    idle_run = dict(normal=73_500, dirty_sync_count=9, status="completed")
    g = lp.guest_speed(run, None, busy_cfg, trace, idle_run, idle_cfg)
    assert g["speed"] == pytest.approx(0.25, rel=2e-3)
    assert g["speed_idle"] == 1.0                       # 40,000 + 2,500 + 30,000 x 1.0 = 72,500
    assert len(g["idle_tried"]) == len(lp.IDLE_SPEEDS)
    # the idle scan replays only the second cell, at the fitted S_busy
    assert {b for b, s, si in seen if si != s} == {idle_cfg.bandwidth}
    assert all(s == g["speed"] for b, s, si in seen if b == idle_cfg.bandwidth)
    # one run only: S_idle = S_busy
    g1 = lp.guest_speed(run, None, busy_cfg, trace)
    assert g1["speed_idle"] == g1["speed"]
    # the nearest in log ratio, the first of equals, whatever the shape
    assert lp.fit_nearest(100, lambda x: {1: 50, 2: 200, 3: 90}[x], (1, 2, 3))[0] == 3
    assert lp.fit_nearest(100, lambda x: {1: 50, 2: 200}[x], (1, 2))[0] == 1


def _fake_linux_result(normal, syncs, status="completed"):
    from pykvmdirty.qemu.runner import QemuResult
    return QemuResult(status=status, total_time=1.0, setup_time=0.002, downtime=0.01,
                      dirty_sync_count=syncs, transferred=normal * 4104, normal=normal,
                      duplicate=29_000, accel="tcg", downtime_bytes=600 * 4104,
                      guest_rate=4.6, guest_rate_migrating=4.0,
                      samples=[dict(t=0.1, status="active", dirty_sync_count=1, remaining=1,
                                    normal=1, duplicate=0, dirty_pages_rate=0, throttle=0,
                                    mbps=1.0)])


def test_guest_speed_is_taken_from_the_calibration_runs_only(tmp_path, monkeypatch):
    """The flow: both speeds are fitted once, from the two calibration runs
    (their settings, their figures), before any judged run; every prediction
    replays at them, and the judged runs (whatever they show) do not change
    them."""
    import json
    from pykvmdirty.cli import main
    from pykvmdirty.commands import _qemu_linux as ql
    from pykvmdirty.qemu import calibration
    from pykvmdirty.qemu.linux import predict as lp
    from pykvmdirty.qemu.linux.model import build_trace
    try:
        initramfs.find_kernel(None)
    except initramfs.LinuxGuestError as e:
        pytest.skip(str(e))
    cal = tmp_path / "cal.json"
    calibration.from_file_dict(_tcg_calibration()).save(str(cal))
    npages = (256 << 20) // 4096
    buf = np.arange(1000, 5000, dtype=np.uint64)
    sets = [buf[(i % 4) * 1000:(i % 4 + 1) * 1000] for i in range(8)]
    trace = build_trace(npages, np.arange(30_000, dtype=np.uint64), sets, [0.05] * 8,
                        {"workload": "vm-flip-16M", "dirty_rate_pages_s": 20_000.0})
    monkeypatch.setattr(ql.wl_model, "measure", lambda *a, **k: trace)
    events = []
    idle = lp.CALIBRATION_IDLE_CELL

    def fake_run(cfg):
        events.append(("run", cfg.bandwidth, cfg.downtime_limit, cfg.auto_converge, cfg.verify))
        if (cfg.bandwidth, cfg.downtime_limit) == (lp.UNLIMITED, 0.02):
            return _fake_linux_result(normal=36_000, syncs=4)
        if (cfg.bandwidth, cfg.downtime_limit, cfg.auto_converge) == (
                idle["bandwidth"], idle["downtime_limit"], idle["auto_converge"]):
            return _fake_linux_result(normal=41_000, syncs=6)
        return _fake_linux_result(normal=900_000, syncs=99)   # never looked at by the fit
    monkeypatch.setattr(ql, "run_migration", fake_run)
    real_speed = lp.guest_speed

    def spy(run, cal_, config, tr, idle_run=None, idle_config=None):
        events.append(("speed", run["normal"], config.bandwidth, idle_run["normal"],
                       idle_config.bandwidth, idle_config.auto_converge))
        return real_speed(run, cal_, config, tr, idle_run, idle_config)
    monkeypatch.setattr(lp, "guest_speed", spy)
    out = tmp_path / "x.json"
    rc = main(["qemu", "--guest", "linux", "--workload", "vm-flip-16M", "--calibration",
               str(cal), "--repeat", "1", "--grid", "one", "--bandwidth", "128MiB",
               "--json", str(out)])
    assert rc == 0
    # the two calibrations, unverified, at settings no judged cell uses
    assert events[0] == ("run", lp.UNLIMITED, 0.02, False, False)
    assert events[1] == ("run", idle["bandwidth"], 0.02, True, False)
    for c in ql.LINUX_CELLS:
        setting = (c["bandwidth"], c.get("downtime_limit", 0.3), c.get("auto_converge", False))
        assert setting not in [tuple(cell[k] for k in ("bandwidth", "downtime_limit",
                                                       "auto_converge"))
                               for cell in lp.CALIBRATION_CELLS]
    # fitted from them alone, then the judged run
    assert events[2] == ("speed", 36_000, lp.UNLIMITED, 41_000, idle["bandwidth"], True)
    assert [e[0] for e in events[3:]] == ["run"]
    doc = json.loads(out.read_text())
    fitted = doc["calibrations"]["tcg"]["guest_speed"]
    assert fitted["run_normal"] == 36_000 and fitted["run"]["normal"] == 36_000
    assert fitted["idle_run_normal"] == 41_000 and fitted["idle_run"]["normal"] == 41_000
    pred = doc["cells"][0]["prediction"]
    assert pred["guest_speed"] == fitted["speed"]
    assert pred["guest_speed_idle"] == fitted["speed_idle"]
    assert doc["cells"][0]["predicted_at"] <= doc["cells"][0]["runs"][0]["started_at"]


def test_linux_dirty_rate_side_by_side_arithmetic():
    from pykvmdirty.qemu.linux.dirtyrate import model_rate_mib_s, two_sigma_mib_s
    meta = {"working_set": [[0.5, 2560.0], [1.0, 3840.0], [2.0, 4096.0]]}
    assert model_rate_mib_s(meta, 1) == pytest.approx(15.0)         # 3840 pages in 1 s
    assert model_rate_mib_s(meta, 0.25) == pytest.approx(20.0)      # 1280 pages in 0.25 s
    assert model_rate_mib_s(meta, 4) is None
    # 256 MiB, 512 samples per GiB: n = 128; 64 MiB dirty in 1 s: p = 1/4
    assert two_sigma_mib_s(64, 1, 512, 256 << 20) == pytest.approx(
        2 * (0.25 * 0.75 / 128) ** 0.5 * 256)
