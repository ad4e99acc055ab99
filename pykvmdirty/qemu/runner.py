"""Runs one real QEMU 7.2 live migration of the test guest and measures it.

A source QEMU boots the guest (guest/, built by firmware.py) and runs its
workload; a destination QEMU waits with ``-S -incoming defer`` (so that its
capabilities are set before it listens, and so that it stays paused after
the migration for the check); both are driven over QMP with qemu.qmp:

1. accelerator: with ``accel="auto"`` KVM is tried first; a guest whose
   status counter does not move within ``boot_timeout`` (KVM over PVM never
   gets past the far jump after CR0.PE) is killed and TCG used instead; the
   result says why (``accel_note``);
2. warm-up: the guest's real dirtying rate, from its counter over ``warmup`` s;
3. capabilities (auto-converge, xbzrle, multifd; everything else off) and
   parameters (max-bandwidth, downtime-limit, cpu-throttle-*) on the source,
   the same capabilities on the destination, ``migrate-incoming`` on
   127.0.0.1 (port 0: the kernel picks a free one and QEMU reports it, so no
   port is guessed), then ``migrate``;
4. ``query-migrate`` every 100 ms (and the guest counter) until completed,
   failed, or ``timeout`` (then cancelled: status "timeout");
5. verification: the destination's range and status block equal the
   source's (both stopped), the a-b invariant holds, and the destination's
   guest runs on (its counter moves after ``cont``).

Both processes are always cleaned up, on success, error, timeout and Ctrl-C
(QemuProcess.kill in a finally outside the event loop; PR_SET_PDEATHSIG if we
are killed outright).  Failures raise a QemuError subclass naming what failed.
"""
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from . import firmware, layout
from .config import DIRTY_RING_SIZE, QemuConfig
from .errors import (GuestStalled, MigrationFailed, MigrationSetupError, QemuError,
                     QemuExited, VerificationError)
from .process import QemuProcess, qemu_binary
from .figures import MigrationFigures
from .verify import ab_invariant, differing_pages, draws_match, first_bytes

SAMPLE_INTERVAL = 0.1
_FINAL = ("completed", "failed", "cancelled")
_RAM_KEYS = ("transferred", "normal", "normal-bytes", "duplicate", "dirty-sync-count",
             "precopy-bytes", "downtime-bytes", "mbps", "dirty-pages-rate", "remaining",
             "pages-per-second")


@dataclass
class QemuResult(MigrationFigures):
    """What QEMU reported and what was checked. status: completed, or
    timeout (still active, then cancelled)."""
    accel: str = ""
    accel_note: str = ""
    normal_bytes: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    guest_rate: float = 0.0         # pages/s written by the guest before the migration
    guest_rate_migrating: float = 0.0   # pages/s from migrate to the stop
    tsc_hz: int = 0
    port: int = 0
    pids: List[int] = field(default_factory=list)
    verification: dict = field(default_factory=dict)
    samples: List[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


async def setup_cmd(vm, refused, command, **args):
    """A QMP command of the migration's setup. A QEMU that refuses it is a
    MigrationSetupError ("<refused>: <QEMU's words>"); one that died stays
    QemuExited."""
    try:
        return await vm.cmd(command, **args)
    except QemuExited:
        raise
    except Exception as e:
        raise MigrationSetupError("%s: %s" % (refused, e)) from e


class QemuMigration:
    """One migration. ``run()`` returns a QemuResult or raises a QemuError.

    ``on_sample(sample_dict)`` is called every 100 ms while migrating (a
    progress bar; tests use it to kill a process mid-migration).
    """

    def __init__(self, config: QemuConfig, on_sample: Optional[Callable[[dict], None]] = None):
        config.check()
        self.config = config
        self.on_sample = on_sample
        self.pids: List[int] = []
        self.ports: List[int] = []
        self._procs: List[QemuProcess] = []
        self._dir: Optional[str] = None

    # -- hooks (tests override these) -------------------------------------------------
    def migration_uri(self, port):
        return "tcp:127.0.0.1:%d" % port

    def _image(self):
        """What _spawn boots (the firmware image; a Linux guest: its kernel and initramfs)."""
        return firmware.image_path()

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> QemuResult:
        qemu_binary()
        image = self._image()
        self._dir = workdir = tempfile.mkdtemp(prefix="pkd-migrate-")
        try:
            return asyncio.run(self._main(image))
        finally:
            for p in self._procs:
                p.kill()
            self._procs.clear()
            for name in os.listdir(workdir):
                os.unlink(os.path.join(workdir, name))
            os.rmdir(workdir)

    def _spawn(self, role, image, accel, incoming=False):
        assert self._dir is not None, "_spawn outside run()"
        params = os.path.join(self._dir, "params-%s.bin" % role)
        with open(params, "wb") as f:
            f.write(self.config.params())
        ring = DIRTY_RING_SIZE if self.config.interface == "ring" else 0
        p = QemuProcess(role, image, params, self.config.guest_size, accel, incoming=incoming,
                        dirty_ring=ring)
        self._procs.append(p)
        return p

    async def _close(self, p):
        await p.close()
        if p in self._procs:
            self._procs.remove(p)

    async def _main(self, image):
        cfg = self.config
        try:
            src, accel, note = await self._boot_source(image)
            dst = self._spawn("destination", image, accel, incoming=True)
            await dst.start()
            self.pids.append(dst.pid)
            res = QemuResult(status="", accel=accel, accel_note=note, pids=list(self.pids),
                             config=cfg.as_dict())
            await self._configure(src, dst)
            port = await self._listen(dst)
            res.port = port
            self.ports.append(port)
            await self._warm_up(src, res)
            await self._migrate(src, dst, port, res)
            if res.status == "completed" and cfg.verify:
                res.verification = await self._verify(src, dst)
            return res
        finally:
            for p in list(self._procs):
                await self._close(p)

    async def _boot_source(self, image):
        cfg = self.config
        if cfg.accel == "tcg":
            order, note = ["tcg"], "TCG (asked for)"
        elif cfg.interface == "ring":       # the dirty ring is KVM's: no TCG fallback
            order, note = ["kvm"], "KVM (dirty ring, %d entries)" % DIRTY_RING_SIZE
        elif cfg.accel == "kvm":
            order, note = ["kvm"], "KVM (asked for)"
        elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
            order, note = ["tcg"], "TCG: /dev/kvm is not available"
        else:
            order, note = ["kvm", "tcg"], "KVM"
        for accel in order:
            src = self._spawn("source", image, accel)
            try:
                await src.start()
                self.pids.append(src.pid)
                await self._wait_progress(src, cfg.boot_timeout if accel == "kvm"
                                          else max(cfg.boot_timeout, 10.0))
                return src, accel, note
            except (GuestStalled, QemuExited) as e:
                if accel != "kvm" or len(order) == 1:
                    raise
                note = "TCG: under KVM %s" % e
                await self._close(src)
        raise AssertionError("unreachable")

    async def _wait_progress(self, vm, timeout):
        """Return once the guest is running and its counter has moved."""
        return await wait_progress(vm, timeout)

    async def _configure(self, src, dst):
        cfg = self.config
        caps = [{"capability": "auto-converge", "state": cfg.auto_converge},
                {"capability": "xbzrle", "state": cfg.xbzrle},
                {"capability": "multifd", "state": cfg.multifd},
                {"capability": "events", "state": True}]
        params = {"max-bandwidth": int(cfg.bandwidth),
                  "downtime-limit": max(1, int(round(cfg.downtime_limit * 1000))),
                  "cpu-throttle-initial": cfg.throttle_initial,
                  "cpu-throttle-increment": cfg.throttle_increment}
        for vm in (src, dst):
            await setup_cmd(vm, "%s QEMU refused the capabilities %s" % (vm.role, caps),
                            "migrate-set-capabilities", capabilities=caps)
        await setup_cmd(src, "source QEMU refused the parameters %s" % (params,),
                        "migrate-set-parameters", **params)

    async def _listen(self, dst):
        uri = "tcp:127.0.0.1:%d" % self.config.port
        await setup_cmd(dst, "destination QEMU cannot listen on %s" % uri, "migrate-incoming",
                        uri=uri)
        info = await dst.cmd("query-migrate")
        for addr in info.get("socket-address", []):
            if addr.get("type") == "inet" and int(addr.get("port", 0)):
                return int(addr["port"])
        raise MigrationSetupError("destination QEMU did not report its listening port: %r"
                                  % info)

    async def _warm_up(self, src, res):
        s0, t0 = await src.status(), time.monotonic()
        await asyncio.sleep(self.config.warmup)
        s1, t1 = await src.status(), time.monotonic()
        res.tsc_hz = s1.tsc_hz
        res.guest_rate = (s1.pages - s0.pages) / (t1 - t0)
        self._pages_at_migrate = s1.pages

    async def _migrate(self, src, dst, port, res):
        cfg = self.config
        uri = self.migration_uri(port)
        await setup_cmd(src, "source QEMU refused to migrate to %s" % uri, "migrate", uri=uri)
        t0 = time.monotonic()
        info = {}
        while True:
            if dst.returncode() is not None:
                state = await self._source_state(src)
                raise QemuExited("%s; source migration %s"
                                 % (dst.exited_error("migration"), state))
            info = await src.cmd("query-migrate", during="migration")
            st = await src.status()
            sample = self._sample(time.monotonic() - t0, info, st)
            res.samples.append(sample)
            res.throttle_max = max(res.throttle_max, sample["throttle"])
            if self.on_sample is not None:
                self.on_sample(sample)
            status = info.get("status")
            if status in _FINAL:
                break
            if time.monotonic() - t0 > cfg.timeout:
                self._fill(res, info, st)      # the figures of the still-active migration
                res.status = "timeout"
                await src.cmd("migrate_cancel")
                for _ in range(100):
                    info = await src.cmd("query-migrate", during="cancelling the migration")
                    if info.get("status") in _FINAL:
                        break
                    await asyncio.sleep(0.05)
                return
            await asyncio.sleep(SAMPLE_INTERVAL)
        if status != "completed":
            why = info.get("error-desc", "no error description")
            if dst.returncode() is not None:
                why += "; " + str(dst.exited_error("migration"))
            raise MigrationFailed("migration %s: %s" % (status, why))
        # QEMU sets "completed" a moment before it computes total-time and downtime
        for _ in range(40):
            if info.get("total-time"):
                break
            await asyncio.sleep(0.025)
            info = await src.cmd("query-migrate", during="the end of the migration")
        self._fill(res, info, st)
        res.status = "completed"
        running = max(1e-3, res.total_time - res.downtime)
        res.guest_rate_migrating = (st.pages - self._pages_at_migrate) / running
        await self._wait_destination(dst)

    async def _source_state(self, src):
        try:
            info = await src.cmd("query-migrate", timeout=2.0)
            return "%s%s" % (info.get("status"), (": " + info["error-desc"])
                             if "error-desc" in info else "")
        except Exception as e:
            return "unknown (%s)" % e

    @staticmethod
    def _sample(t, info, st):
        ram = info.get("ram", {})
        s = {"t": t, "status": info.get("status"),
             "throttle": int(info.get("cpu-throttle-percentage", 0)),
             "expected_downtime": info.get("expected-downtime", 0) / 1000.0,
             "guest_pages": st.pages}
        for k in _RAM_KEYS:
            s[k.replace("-", "_")] = ram.get(k, 0)
        return s

    @staticmethod
    def _fill(res, info, st):
        ram = info.get("ram", {})
        res.total_time = info.get("total-time", 0) / 1000.0
        res.setup_time = info.get("setup-time", 0) / 1000.0
        res.downtime = info.get("downtime", 0) / 1000.0
        res.expected_downtime = info.get("expected-downtime", 0) / 1000.0
        res.dirty_sync_count = ram.get("dirty-sync-count", 0)
        res.transferred = ram.get("transferred", 0)
        res.normal = ram.get("normal", 0)
        res.normal_bytes = ram.get("normal-bytes", 0)
        res.duplicate = ram.get("duplicate", 0)
        res.precopy_bytes = ram.get("precopy-bytes", 0)
        res.downtime_bytes = ram.get("downtime-bytes", 0)

    async def _wait_destination(self, dst, timeout=20.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            info = await dst.cmd("query-migrate", during="the destination's load")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise MigrationFailed("destination's incoming migration %s: %s"
                                      % (status, info.get("error-desc", "")))
            await asyncio.sleep(0.05)
        raise MigrationFailed("destination did not finish loading within %.0f s" % timeout)

    async def _verify(self, src, dst):
        """Compare the stopped destination with the stopped source; raise on any difference."""
        cfg = self.config
        out, problems = {}, []
        s_src, s_dst = await src.status(), await dst.status()
        out["counter_equal"] = s_src == s_dst
        out["passes"] = s_dst.passes
        out["pages_written"] = s_dst.pages
        if not out["counter_equal"]:
            problems.append("status block: destination passes=%d pages=%d, source passes=%d "
                            "pages=%d" % (s_dst.passes, s_dst.pages, s_src.passes, s_src.pages))
        regions = [(0, 0xA0000)]
        if cfg.workload != "idle":
            regions.append((cfg.start, cfg.end - cfg.start))
        out["differing_pages"] = 0
        out["pages_compared"] = 0
        for addr, size in regions:
            a = await src.read_memory(addr, size)
            b = await dst.read_memory(addr, size)
            bad = differing_pages(a, b)
            out["pages_compared"] += size // layout.PAGE
            out["differing_pages"] += int(bad.size)
            if bad.size:
                fa, fb = first_bytes(a), first_bytes(b)
                shown = ", ".join("%#x src %d dst %d" % (addr + int(i) * layout.PAGE, fa[i], fb[i])
                                  for i in bad[:8])
                problems.append("%d of %d pages of [%#x, %#x) differ (first byte of each: %s%s)"
                                % (bad.size, size // layout.PAGE, addr, addr + size, shown,
                                   ", ..." if bad.size > 8 else ""))
            if cfg.workload in ("uniform", "hotspot") and addr == cfg.start:
                # the guest's pages are the emulator's draws (kvmdirty/page_draw.h)
                batch = max(1, cfg.rate // 10000)
                out["draws_match"], out["draws_differing"] = draws_match(
                    first_bytes(b), cfg.workload, cfg.npages, cfg.seed, cfg.hot_fraction,
                    cfg.hot_share, s_dst.pages, batch)
            if cfg.workload == "ab" and addr == cfg.start:
                ab = ab_invariant(first_bytes(b))
                out["ab_edge_page"] = ab.edge_page
                if not ab.ok:
                    problems.append("a-b invariant broken on the destination: %d bad page(s)"
                                    % ab.bad_pages)
        if problems:
            raise VerificationError("destination (%s) does not match the source: %s"
                                    % (dst.accel, "; ".join(problems)))
        await dst.cmd("cont")
        try:
            await self._wait_progress(dst, 10.0)
        except GuestStalled as e:
            raise VerificationError("the destination's guest does not run on: %s" % e) from e
        out["destination_runs"] = True
        return out


def run_migration(config: Optional[QemuConfig] = None, on_sample=None, **kw) -> QemuResult:
    """Run one real QEMU migration; keyword arguments build a QemuConfig."""
    if config is None:
        config = QemuConfig(**kw)
    elif kw:
        raise TypeError("pass either a QemuConfig or keyword arguments, not both")
    if config.guest != "firmware":
        raise ValueError("run_migration runs the firmware guest; the Linux guest runs with "
                         "pykvmdirty.qemu.linux.runner.run_linux_migration")
    return QemuMigration(config, on_sample).run()


async def wait_progress(vm, timeout):
    """Return the firmware guest's status once it is running and its counter
    has moved; GuestStalled (saying where it stopped) after timeout s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    first = last = None
    while loop.time() < deadline:
        st = await vm.status()
        last = st
        if st.state == "bad-params":
            raise QemuError("the test guest rejected its parameters (or has no PIT to "
                            "measure its TSC)")
        if st.state == "running":
            if first is None:
                first = st
            elif (st.passes, st.pages) != (first.passes, first.pages):
                return st
        await asyncio.sleep(0.05)
    where = ("its status block was never written (stuck before 64-bit mode)"
             if last is None or not last.valid else
             "its status is %s, counter %d" % (last.state, last.passes))
    raise GuestStalled("the guest made no progress in %.1f s: %s" % (timeout, where))
