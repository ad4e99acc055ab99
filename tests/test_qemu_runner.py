"""The real QEMU runner: a short migration verified end to end, and every way it
can go wrong (a QEMU dying mid-migration, a port in use, a destination that
refuses, Ctrl-C, a migration that does not converge, KVM making no progress)
ends with a clear error and no QEMU process or listening socket left behind.
Skipped with the reason where qemu-system-x86_64, qemu.qmp or the toolchain
is missing."""
import os
import shutil
import signal
import socket

import pytest
from conftest import is_qemu

pytest.importorskip("qemu.qmp", reason="the qemu.qmp library is not installed")
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
                allow_module_level=True)
if any(shutil.which(t) is None for t in ("gcc", "ld", "objcopy")):
    pytest.skip("the guest image needs gcc, ld and objcopy", allow_module_level=True)

from pykvmdirty.qemu.config import QemuConfig  # noqa: E402
from pykvmdirty.qemu.errors import (MigrationFailed, MigrationSetupError,  # noqa: E402
                                    QemuExited)
from pykvmdirty.qemu.runner import QemuMigration  # noqa: E402

MIB = 1 << 20
SMALL = dict(guest_size=128 * MIB, end=32 * MIB, warmup=0.3, timeout=30)


def listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def assert_clean(run):
    assert run.pids, "the run started no QEMU"
    assert not [p for p in run.pids if is_qemu(p)], "stray QEMU processes"
    assert not set(run.ports) & listening_ports(), "a port is still listening"


def test_short_migration_completes_and_matches():
    run = QemuMigration(QemuConfig(bandwidth=1024 * MIB, **SMALL))
    r = run.run()
    assert r.status == "completed"
    assert r.verification["counter_equal"] and r.verification["differing_pages"] == 0, \
        r.verification
    assert r.verification["destination_runs"]
    assert r.verification["ab_edge_page"] >= -1
    npages = (SMALL["end"] - MIB) // 4096
    assert r.normal >= npages                      # every page of the range is non-zero
    assert r.normal + r.duplicate >= SMALL["guest_size"] // 4096
    assert r.transferred >= r.normal_bytes
    assert r.dirty_sync_count >= 2
    assert 0 < r.downtime <= r.total_time
    assert r.guest_rate > 0 and r.samples and r.samples[-1]["status"] == "completed"
    assert r.accel in ("kvm", "tcg") and r.accel_note
    assert_clean(run)


@pytest.mark.parametrize("workload", ["uniform", "hotspot"])
def test_guest_writes_the_emulators_page_draws(workload):
    # the firmware guest draws its pages with kvmdirty/page_draw.h seeded as the
    # emulator's vCPU 0: the destination's page counts are the emulator's draws
    # (at most one partial batch ahead)
    run = QemuMigration(QemuConfig(workload=workload, rate=20000, hot_share=0.8, seed=11,
                                   bandwidth=1024 * MIB, **SMALL))
    r = run.run()
    v = r.verification
    assert r.status == "completed" and v["pages_written"] > 1000
    assert v["draws_match"], v
    # a different seed does not match: the check can fail
    from pykvmdirty.qemu.verify import draws_match
    from pykvmdirty.qemu.verify import first_bytes as fb
    ok, bad = draws_match(fb(bytes(4096 * 8)), workload, 8, 11, 0.05, 0.8, 1000, 2)
    assert not ok and bad > 0
    assert_clean(run)


def _ring_unavailable():
    from pykvmdirty.qemu.process import dirty_ring_unavailable
    return dirty_ring_unavailable()


def test_dirty_ring_migration_completes_and_matches():
    """QEMU with -accel kvm,dirty-ring-size=4096 (--interface ring): skipped with
    the reason where KVM or its dirty ring is missing."""
    why = _ring_unavailable()
    if why:
        pytest.skip("the dirty ring cannot run here: %s" % why)
    args = []

    class Recording(QemuMigration):
        def _spawn(self, role, image, accel, incoming=False):
            p = super()._spawn(role, image, accel, incoming)
            args.append(" ".join(p.args))
            return p

    run = Recording(QemuConfig(workload="uniform", rate=20000, bandwidth=1024 * MIB,
                               interface="ring", **SMALL))
    r = run.run()
    assert r.status == "completed" and r.accel == "kvm" and "dirty ring" in r.accel_note
    assert r.verification["differing_pages"] == 0 and r.verification["destination_runs"]
    assert len(args) == 2 and all("-accel kvm,dirty-ring-size=4096 " in a for a in args)
    assert_clean(run)


@pytest.mark.parametrize("victim", ["destination", "source"])
def test_qemu_killed_mid_migration(victim):
    run = None

    def kill(sample):
        procs = {p.role: p for p in run._procs}
        if procs[victim].returncode() is None:
            os.kill(procs[victim].pid, signal.SIGKILL)

    run = QemuMigration(QemuConfig(bandwidth=16 * MIB, **SMALL), on_sample=kill)
    with pytest.raises((QemuExited, MigrationFailed), match=victim) as e:
        run.run()
    assert "SIGKILL" in str(e.value)
    assert_clean(run)


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = QemuMigration(QemuConfig(port=port, **SMALL))
        with pytest.raises(MigrationSetupError, match="cannot listen on tcp:127.0.0.1:%d.*in use"
                           % port):
            run.run()
        assert not [p for p in run.pids if is_qemu(p)]


class ToClosedPort(QemuMigration):
    """Migrates to a port that is bound but not listening: the connection is refused."""

    def __init__(self, config, closed_port):
        super().__init__(config)
        self.closed_port = closed_port

    def migration_uri(self, port):
        return "tcp:127.0.0.1:%d" % self.closed_port


def test_refusing_destination():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        run = ToClosedPort(QemuConfig(**SMALL), closed.getsockname()[1])
        with pytest.raises(MigrationFailed, match="(?i)refused"):
            run.run()
    assert_clean(run)


def test_ctrl_c_cleans_up():
    def interrupt(sample):
        os.kill(os.getpid(), signal.SIGINT)

    run = QemuMigration(QemuConfig(bandwidth=16 * MIB, **SMALL), on_sample=interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert_clean(run)


def test_migration_that_does_not_converge_times_out():
    # a-b rewrites all 31 MiB faster than 8 MiB/s x 0.1 s can ever send them
    cfg = QemuConfig(bandwidth=8 * MIB, downtime_limit=0.1, **dict(SMALL, timeout=1.5))
    run = QemuMigration(cfg)
    r = run.run()
    assert r.status == "timeout"
    assert r.total_time >= 1.0 and r.transferred > 0 and r.verification == {}
    assert_clean(run)


class KvmSourcePaused(QemuMigration):
    """The KVM source is started with -S, so its guest never moves."""

    def _spawn(self, role, image, accel, incoming=False):
        p = super()._spawn(role, image, accel, incoming)
        if accel == "kvm" and role == "source":
            p.args.append("-S")
        return p


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no /dev/kvm")
def test_auto_accel_falls_back_to_tcg_when_the_guest_stalls():
    run = KvmSourcePaused(QemuConfig(bandwidth=1024 * MIB, boot_timeout=1.0, verify=False,
                                     **SMALL))
    r = run.run()
    assert r.accel == "tcg" and r.status == "completed"
    assert "no progress" in r.accel_note and "KVM" in r.accel_note
    assert len(run.pids) == 3                     # kvm source, tcg source, destination
    assert_clean(run)


def _qemu_version():
    import re
    import subprocess
    out = subprocess.run([shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
                          "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PYKVMDIRTY_SLOW", "") in ("", "0"),
                    reason="a 1 GiB TCG migration (~15 s): set PYKVMDIRTY_SLOW=1")
@pytest.mark.skipif(_qemu_version() < (9, 0),
                    reason="QEMU before 9.0 loses TCG writes after a dirty-bitmap sync "
                    "(upstream 'system/physmem: Fix migration dirty bitmap coherency with "
                    "TCG memory access', 2024): the KVM twin below holds this QEMU to it")
def test_tcg_uniform_migration_keeps_every_write():
    """Uniform 20000 pages/s at 128 MiB/s, 1 GiB guest, under TCG: the stopped
    destination must equal the stopped source (pykvmdirty/qemu/
    tcg_lost_writes.py). QEMU 7.2 loses the last writes to a few pages here
    (3 of 3 runs: the TCG dirty-bitmap bug fixed upstream in 2024), so on a
    QEMU before 9.0 this is skipped with that reason, never an xfail that
    passes whatever happens; slow: PYKVMDIRTY_SLOW=1 pytest -m slow."""
    from pykvmdirty.qemu.tcg_lost_writes import run_once
    lost, msg = run_once("tcg")
    assert not lost, msg


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PYKVMDIRTY_SLOW", "") in ("", "0"),
                    reason="a 1 GiB migration: set PYKVMDIRTY_SLOW=1")
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no /dev/kvm")
def test_kvm_uniform_migration_keeps_every_write():
    """The same cell under KVM (the bug is TCG's): every QEMU the project
    targets must keep every write."""
    from pykvmdirty.qemu.tcg_lost_writes import run_once
    lost, msg = run_once("kvm")
    assert not lost, msg
