"""QEMU 7.2's own dirty-rate measurement over QMP, and the firmware guest
measured by it side by side with the emulator.

:func:`calc_dirty_rate` runs ``calc-dirty-rate`` (``calc-time`` in whole
seconds, 1..60 in 7.2; ``sample-pages`` per GiB, 128..4096, page-sampling
only; ``mode`` page-sampling, dirty-bitmap or dirty-ring) on any running QEMU
driven by :class:`~pykvmdirty.qemu.process.QemuProcess` (or an object with
the same ``async cmd(name, during=..., timeout=..., **args)``), waits for
``query-dirty-rate`` to say "measured" and returns its figures as a dict.
QEMU refuses dirty-ring unless it runs with ``-accel kvm,dirty-ring-size=N``
and dirty-bitmap when it does; a refusal is a :class:`DirtyRateRefused`
carrying QEMU's words.

:func:`measure_firmware_guest` boots the project's firmware guest
(uniform/hotspot draws of kvmdirty/page_draw.h, the emulator's own), runs
calc-dirty-rate in each mode over each period and, for each, reads the
guest's write counter before and after, so the emulator can replay the very
pages the guest wrote (:func:`emulator_estimates`).
"""
import asyncio
import os
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np

from ..migration import dirtyrate as emu
from .config import DIRTY_RING_SIZE, QemuConfig
from .errors import GuestStalled, QemuError, QemuExited
from .layout import PAGE
from .runner import wait_progress

MODES = emu.METHODS
#: QEMU 7.2's calc-time range (whole seconds)
MIN_CALC_TIME = 1
MAX_CALC_TIME = 60
PAGES_PER_MIB = (1 << 20) // PAGE


class DirtyRateRefused(QemuError):
    """QEMU refused calc-dirty-rate (for instance dirty-ring without a ring)."""


class ModeCrashed(QemuError):
    """QEMU exited while it measured in one mode (7.2's dirty-bitmap under TCG
    is killed by SIGSEGV here)."""

    def __init__(self, mode, why):
        super().__init__("QEMU exited during calc-dirty-rate %s: %s" % (mode, why))
        self.mode = mode


def check_qmp_args(mode, calc_time, sample_pages=None):
    """(mode, calc_time, sample_pages) as QEMU 7.2 accepts them, or
    ValueError/TypeError naming the bad value before QEMU is asked."""
    if mode not in MODES:
        raise ValueError("mode must be one of %s, got %r" % (", ".join(MODES), mode))
    if isinstance(calc_time, bool) or not isinstance(calc_time, (int, float)):
        raise TypeError("calc_time must be a whole number of seconds, got %r" % (calc_time,))
    if calc_time != int(calc_time):
        raise ValueError("calc_time must be a whole number of seconds (QEMU 7.2's calc-time), "
                         "got %r" % (calc_time,))
    if not MIN_CALC_TIME <= calc_time <= MAX_CALC_TIME:
        raise ValueError("calc_time must be in [%d, %d] seconds (QEMU 7.2's range), got %r"
                         % (MIN_CALC_TIME, MAX_CALC_TIME, calc_time))
    if sample_pages is not None:
        if mode != "page-sampling":
            raise ValueError("sample_pages applies to page-sampling only, not %s" % mode)
        sample_pages = emu.check_sample_pages(sample_pages)
    return mode, int(calc_time), sample_pages


def _result(info, mode, wall):
    rate = int(info.get("dirty-rate", -1))
    return {"mode": info.get("mode", mode), "status": info.get("status"),
            "calc_time": int(info.get("calc-time", 0)),
            "sample_pages": int(info.get("sample-pages", 0)),
            "start_time": int(info.get("start-time", 0)),
            "dirty_rate_mib_s": rate, "pages_per_s": rate * PAGES_PER_MIB,
            "vcpu_dirty_rate": [{"id": int(v["id"]), "dirty_rate_mib_s": int(v["dirty-rate"])}
                                for v in info.get("vcpu-dirty-rate", [])],
            "wall_time": wall}


async def calc_dirty_rate(qemu, mode="page-sampling", calc_time=1, sample_pages=None,
                          poll=0.05):
    """Run QMP calc-dirty-rate on `qemu` and wait for its result: a dict with
    mode, status ("measured"), calc_time (s), sample_pages (per GiB; 0 outside
    page-sampling), start_time, dirty_rate_mib_s (QEMU's "MB/s", MiB, an
    integer it truncates), pages_per_s (the same x 256), vcpu_dirty_rate
    (dirty-ring: [{id, dirty_rate_mib_s}]) and wall_time (s from the command
    to the result)."""
    mode, calc_time, sample_pages = check_qmp_args(mode, calc_time, sample_pages)
    args = {"calc-time": calc_time, "mode": mode}
    if sample_pages is not None:
        args["sample-pages"] = sample_pages
    t0 = time.monotonic()
    try:
        await qemu.cmd("calc-dirty-rate", during="calc-dirty-rate (%s)" % mode, **args)
    except QemuError:
        raise
    except Exception as e:
        returncode = getattr(qemu, "returncode", lambda: None)
        for _ in range(20):                         # a lost connection: did QEMU die?
            if returncode() is not None:
                raise qemu.exited_error("calc-dirty-rate (%s)" % mode) from e
            await asyncio.sleep(0.05)
        raise DirtyRateRefused("QEMU refused calc-dirty-rate %s: %s" % (args, e)) from e
    await asyncio.sleep(max(0.0, calc_time - 0.2))
    deadline = time.monotonic() + calc_time + 20.0
    while True:
        info = await qemu.cmd("query-dirty-rate", during="query-dirty-rate (%s)" % mode)
        if info.get("status") == "measured":
            return _result(info, mode, time.monotonic() - t0)
        if time.monotonic() > deadline:
            raise QemuError("calc-dirty-rate (%s, %d s) did not finish within %.0f s: status %s"
                            % (mode, calc_time, calc_time + 20.0, info.get("status")))
        await asyncio.sleep(poll)


# -- the firmware guest ---------------------------------------------------------------------

async def wait_steady(vm, rate, timeout=10.0, step=0.25):
    """Wait until the firmware guest writes at >= 80% of `rate` pages/s over
    `step` s (under KVM here it first crawls for ~2 s while its memory is
    faulted in), at most `timeout` s. Returns the last rate seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    st0, t0 = await vm.status(), loop.time()
    seen = 0.0
    while loop.time() < deadline:
        await asyncio.sleep(step)
        st1, t1 = await vm.status(), loop.time()
        seen = (st1.pages - st0.pages) / (t1 - t0)
        if not rate or seen >= 0.8 * rate:
            break
        st0, t0 = st1, t1
    return seen


async def measure_windows(vm, modes, calc_times, sample_pages=None):
    """On a running firmware guest: calc-dirty-rate for every mode and period.
    Returns a list of dicts (calc_dirty_rate's, plus pages_before/pages_after:
    the guest's write counter read just before the command and just after the
    result, counter_time: the seconds between the two reads, and guest_rate:
    the pages/s between them)."""
    out = []
    for t in calc_times:
        for mode in modes:
            st0, t0 = await vm.status(), time.monotonic()
            try:
                r = await calc_dirty_rate(vm, mode, t,
                                          sample_pages if mode == "page-sampling" else None)
            except QemuExited as e:
                raise ModeCrashed(mode, str(e).split(": ", 1)[-1]) from e
            st1, t1 = await vm.status(), time.monotonic()
            r.update(pages_before=st0.pages, pages_after=st1.pages, counter_time=t1 - t0,
                     guest_rate=(st1.pages - st0.pages) / (t1 - t0))
            out.append(r)
    return out


def guest_draws(cfg: QemuConfig, begin, end):
    """The gfns (guest-physical) the firmware guest wrote as its writes
    [begin, end): the emulator's draws for the workload (vCPU 0's seed)."""
    from ..bindings.workload import Generator
    from ..migration.workloads import vcpu_seed
    gen = Generator(cfg.workload, cfg.start // PAGE, cfg.npages, seed=vcpu_seed(cfg.seed, 0),
                    hot_fraction=cfg.hot_fraction, hot_share=cfg.hot_share)
    buf = np.empty(1 << 16, dtype=np.uint64)
    left = int(begin)
    while left:                           # skip the draws before the window
        gfns, _ = gen.generate(min(left, buf.size), buf)
        left -= gfns.size
    out = np.empty(int(end - begin), dtype=np.uint64)
    at = 0
    while at < out.size:
        gfns, _ = gen.generate(min(out.size - at, buf.size), buf)
        out[at:at + gfns.size] = gfns
        at += gfns.size
    return out


def emulator_estimates(cfg: QemuConfig, window, methods=emu.METHODS, ring_entries=None,
                       sample_pages=None, sampling_seed=0):
    """The emulator's methods over the same period as a QEMU window (one of
    measure_windows' dicts): the guest's own draws for calc_time s at the rate
    its counter showed, replayed on a guest of the same size. An emu.Window."""
    t = float(window["calc_time"]) or 1.0
    begin = int(window["pages_before"])
    n = int(round(window["guest_rate"] * t))
    gfns = guest_draws(cfg, begin, begin + n)
    return emu.replay(gfns, cfg.guest_size, t, methods=methods,
                      ring_entries=ring_entries or DIRTY_RING_SIZE,
                      sample_pages=sample_pages or emu.DEFAULT_SAMPLE_PAGES,
                      sampling_seed=sampling_seed)


async def _run_guest(cfg, image, accel, ring, modes, calc_times, sample_pages, boot_timeout,
                     workdir):
    from .process import QemuProcess
    params = os.path.join(workdir, "params-%s.bin" % accel)
    with open(params, "wb") as f:
        f.write(cfg.params())
    vm = QemuProcess("dirtyrate", image, params, cfg.guest_size, accel,
                     dirty_ring=DIRTY_RING_SIZE if ring else 0)
    try:
        await vm.start()
        await wait_progress(vm, boot_timeout if accel == "kvm" else max(boot_timeout, 10.0))
        await wait_steady(vm, cfg.rate)
        return await measure_windows(vm, modes, calc_times, sample_pages)
    finally:
        await vm.close()
        vm.kill()


def _run_plain(cfg, image, accel, modes, times, sample_pages, boot_timeout, workdir, skipped):
    """The modes but dirty-ring in one QEMU; a mode that makes QEMU exit is
    recorded in `skipped` and the others measured again in a fresh QEMU."""
    modes = list(modes)
    while modes:
        try:
            wins = asyncio.run(_run_guest(cfg, image, accel, False, modes, times, sample_pages,
                                          boot_timeout, workdir))
        except ModeCrashed as e:
            skipped[e.mode] = "%s (%s)" % (e, accel.upper())
            modes.remove(e.mode)
            continue
        for w in wins:
            w["accel"] = accel
        return wins
    return []


def measure_firmware_guest(cfg: QemuConfig, modes: Sequence[str] = MODES,
                           calc_times: Sequence[int] = (1,), sample_pages: Optional[int] = None,
                           boot_timeout=5.0):
    """Boot the firmware guest (cfg: its workload, size, seed, accel) and
    measure it with calc-dirty-rate: page-sampling and dirty-bitmap in one
    QEMU (KVM, or TCG where KVM makes no progress), dirty-ring in a second
    one with ``-accel kvm,dirty-ring-size=4096`` where this host has it.
    Returns {"accel": ..., "windows": [...], "skipped": {mode: reason}}."""
    from . import firmware
    from .process import dirty_ring_unavailable, qemu_binary
    qemu_binary()
    modes = emu.check_methods(modes)
    times = [check_qmp_args("page-sampling", t, sample_pages)[1] for t in calc_times]
    image = firmware.image_path()
    out: dict = {"windows": [], "skipped": {}, "accel": None, "accel_note": ""}
    workdir = tempfile.mkdtemp(prefix="pkd-dirtyrate-")
    try:
        plain = [m for m in modes if m != "dirty-ring"]
        if plain:
            order = {"auto": ["kvm", "tcg"], "kvm": ["kvm"], "tcg": ["tcg"]}[cfg.accel]
            if "kvm" in order and not os.access("/dev/kvm", os.R_OK | os.W_OK):
                order = [a for a in order if a != "kvm"]
                out["accel_note"] = "/dev/kvm is not available"
            if not order:
                raise QemuError("accel kvm asked for, but /dev/kvm is not available")
            for accel in order:
                try:
                    wins = _run_plain(cfg, image, accel, plain, times, sample_pages,
                                      boot_timeout, workdir, out["skipped"])
                except (GuestStalled, QemuExited) as e:
                    if accel == order[-1]:
                        raise
                    out["accel_note"] = "under %s: %s" % (accel.upper(), e)
                    continue
                out["accel"] = accel
                out["windows"] += wins
                break
        if "dirty-ring" in modes:
            why = dirty_ring_unavailable(DIRTY_RING_SIZE)
            if cfg.accel == "tcg":
                why = "the dirty ring is KVM's (accel tcg asked for)"
            if why:
                out["skipped"]["dirty-ring"] = why
            else:
                try:
                    wins = asyncio.run(_run_guest(cfg, image, "kvm", True, ["dirty-ring"], times,
                                                  None, boot_timeout, workdir))
                    for w in wins:
                        w["accel"] = "kvm (dirty ring %d)" % DIRTY_RING_SIZE
                    out["windows"] += wins
                except (GuestStalled, QemuExited) as e:
                    out["skipped"]["dirty-ring"] = str(e)
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    return out


def side_by_side(cfg: QemuConfig, measured, sample_pages=None) -> List[dict]:
    """For each QEMU window: QEMU's figure, the true dirty set of the pages the
    guest wrote in calc_time s (its own draws), and the emulator's estimate by
    the same method on the same pages."""
    rows = []
    for w in measured["windows"]:
        win = emulator_estimates(cfg, w, [w["mode"]], sample_pages=sample_pages)
        est = win.estimates[w["mode"]]
        rows.append(dict(mode=w["mode"], accel=w.get("accel"), calc_time=w["calc_time"],
                         guest_rate=w["guest_rate"], qemu_mib_s=w["dirty_rate_mib_s"],
                         true_mib_s=win.true_pages / win.calc_time / PAGES_PER_MIB,
                         emulator_mib_s=est.mib_per_s,
                         emulator_qemu_mib_s=est.detail.get("qemu_mb_per_s"),
                         ring_true_mib_s=(win.ring_true_entries / win.calc_time / PAGES_PER_MIB
                                          if win.ring_true_entries is not None else None)))
    return rows
