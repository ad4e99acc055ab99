"""The Linux guest's dirtying, measured, as a workload model the loop replays.

How it is measured: the guest (one QEMU, no migration) boots, runs its
workload for ``warmup`` s, then is stopped and its whole RAM saved with
``pmemsave`` (snapshot 0); then, ``windows`` times: ``cont``, run
``window_s``, ``stop``, save, compare page by page with the previous
snapshot. The pages that differ are the pages the guest wrote in that
window; the guest's running time is measured around ``cont``/``stop``
(under TCG the guest's clock stops with it).

Why snapshots: they are exact for what a migration must resend (a page
whose contents changed), need nothing from QEMU beyond ``pmemsave`` (QEMU's
dirty bitmap is not readable over QMP, and calc-dirty-rate gives a rate, not
the pages, from samples), and a 256 MiB-1 GiB guest is saved and compared in
well under a second. What they miss, said rather than hidden: a page
rewritten with the same contents within a window (the dirty log counts it,
the diff does not), and how often a page was written inside a window (a
page written twice counts once, as it does in the dirty log between two
syncs). ``changed_to_zero`` counts pages the kernel zeroed (the model
writes them as non-zero pages).

The model is a trace file (migration/trace.py, format version 1) that
``pykvmdirty migrate --trace FILE`` replays, with meta:

- interval 0 at t = 0: every page that is not zero in snapshot 0, the
  guest's memory when the migration starts (``"prefill": 1``: written before
  the dirty log is first collected);
- then each window's pages, spread over the window: a page that changed in
  at least ``HOT_SHARE`` of the windows (written all the time: timers, the
  heartbeat, a stressor's buffer) is written in every sub-interval of
  ``SUB_S`` of the window, any other page in one sub-interval drawn at
  random (seeded), as a writer spread over the window would;
- ``"repeat"``: the windows replay again after the last one, for as long
  as the migration runs (the workload's steady state stands for the rest);
- ``"throttle": "slows"``: auto-converge slows the replay as it slows the
  guest (a throttled vCPU does the same writes, later);
- the measurement itself: per-window pages, the working-set curve (pages
  in the union of 1, 2, 4, ... consecutive windows), the dirty rate, the
  pages changed to zero, load average, kernel, date.
"""
import asyncio
import os
import time
from typing import Callable, Optional

import numpy as np

from ...migration.trace import Trace
from ..layout import PAGE
from . import memory
from .guest import LinuxProcess, boot_files

HOT_SHARE = 0.9
SUB_S = 0.02
NS = 1_000_000_000


def working_set(sets, window_s):
    """[(seconds, mean pages in the union of k consecutive windows)] for k = 1, 2, 4, ..."""
    out = []
    k = 1
    n = len(sets)
    while k <= n:
        sizes = []
        for i in range(0, n - k + 1):
            u = sets[i]
            for s in sets[i + 1:i + k]:
                u = np.union1d(u, s)
            sizes.append(u.size)
        out.append([k * window_s, float(np.mean(sizes))])
        k *= 2
    return out


def build_trace(npages, start_nonzero, sets, durations, meta, seed=0):
    """The Trace of a measurement: prefill, the windows spread over their
    sub-intervals (hot pages in every one), repeat."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(npages, dtype=np.int32)
    for s in sets:
        counts[s.astype(np.int64)] += 1
    hot_min = max(2, int(np.ceil(HOT_SHARE * len(sets))))
    hot = counts >= hot_min
    t_list, chunks = [0], [np.sort(start_nonzero.astype(np.uint64))]
    t0 = 0.0
    for s, w in zip(sets, durations):
        m = max(1, int(round(w / SUB_S)))
        is_hot = hot[s.astype(np.int64)]
        hot_g, cold_g = s[is_hot], s[~is_hot]
        slot = rng.integers(0, m, cold_g.size)
        for j in range(m):
            t_list.append(int(round((t0 + (j + 1) * w / m) * NS)))
            chunks.append(np.sort(np.concatenate([hot_g, cold_g[slot == j]])).astype(np.uint64))
        t0 += w
    offsets = np.zeros(len(chunks) + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum([c.size for c in chunks])
    gfns = np.concatenate(chunks)
    meta = dict(meta, prefill=1, repeat={"from": 1, "period_ns": int(round(t0 * NS))},
                throttle="slows",
                hot_pages=int(hot.sum()), hot_min_windows=hot_min)
    return Trace(npages, np.array(t_list, dtype=np.uint64), offsets, gfns,
                 np.zeros(gfns.size, dtype=np.uint16), meta)


async def _measure(config, windows, window_s, on_progress):
    size = config.guest_size
    npages = size // PAGE
    kernel, initrd = boot_files(config.kernel, config.workload)
    d = memory.snapshot_dir()
    paths = [os.path.join(d, "pkd-model-%d-%d" % (os.getpid(), i)) for i in range(2)]
    vm = LinuxProcess("measured", kernel, initrd, config.workload, size, "tcg"
                      if config.accel in ("auto", "tcg") else config.accel)
    try:
        await vm.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        st = await vm.status()
        while st.pages < 2:
            if vm.returncode() is not None:
                raise vm.exited_error("boot")
            if loop.time() > deadline:
                raise memory_error("the Linux guest did not reach its workload in 90 s "
                                   "(console: %s)" % vm.console.tail())
            await asyncio.sleep(0.1)
            st = await vm.status()
        await asyncio.sleep(config.warmup)
        await vm.cmd("stop")
        await memory.save(vm, size, paths[0])
        prev = memory.pages(paths[0])
        start_nonzero = memory.nonzero_pages(prev)
        sets, durations, to_zero = [], [], []
        for i in range(windows):
            durations.append(await memory.run_window(vm, window_s))
            cur_path = paths[(i + 1) % 2]
            await memory.save(vm, size, cur_path)
            cur = memory.pages(cur_path)
            changed = memory.changed_pages(prev, cur)
            sets.append(changed)
            to_zero.append(memory.zero_pages(cur, changed))
            prev = cur
            if on_progress:
                on_progress("window %d/%d: %d pages changed in %.0f ms"
                            % (i + 1, windows, changed.size, durations[-1] * 1000))
        ticks = (await vm.status()).pages
        return npages, start_nonzero, sets, durations, to_zero, kernel, ticks
    finally:
        await vm.close()
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)


def memory_error(msg):
    from ..errors import GuestStalled
    return GuestStalled(msg)


def measure(config, windows=20, window_s=0.2, on_progress: Optional[Callable[[str], None]] = None,
            seed=0) -> Trace:
    """Measure the Linux guest of `config` (a QemuConfig, guest "linux") and
    return its model (a Trace; ``.save(path)`` writes the file)."""
    if config.guest != "linux":
        raise ValueError("the workload model measures the Linux guest (guest='linux')")
    if not 1 <= windows <= 1000:
        raise ValueError("windows must be in [1, 1000], got %r" % (windows,))
    if not 0.02 <= window_s <= 10:
        raise ValueError("window_s must be in [0.02, 10] s, got %r" % (window_s,))
    npages, start_nonzero, sets, durations, to_zero, kernel, ticks = asyncio.run(
        _measure(config, windows, window_s, on_progress))
    total_s = float(sum(durations))
    union = np.unique(np.concatenate(sets)) if sets else np.zeros(0, np.uint64)
    meta = dict(
        source="Linux guest under QEMU (%s): whole-RAM snapshots (pmemsave) every %.3f s of "
               "guest running time, pages whose contents changed" % (
                   "TCG" if config.accel in ("auto", "tcg") else config.accel, window_s),
        workload=config.workload, guest_size=config.guest_size, kernel=os.path.basename(kernel),
        warmup_s=config.warmup, window_s=window_s, windows=len(sets),
        window_durations_s=[round(d, 4) for d in durations],
        pages_per_window=[int(s.size) for s in sets],
        changed_to_zero=[int(z) for z in to_zero],
        nonzero_at_start=int(start_nonzero.size), union_pages=int(union.size),
        dirty_rate_pages_s=float(sum(s.size for s in sets) / total_s) if total_s else 0.0,
        working_set=working_set(sets, window_s), heartbeat_ticks=int(ticks),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        loadavg=list(os.getloadavg()))
    return build_trace(npages, start_nonzero, sets, durations, meta, seed)


def summary(trace) -> str:
    m = trace.meta
    ws = ", ".join("%g s %d" % (s, p) for s, p in m.get("working_set", []))
    return ("%s: %d of %d pages not zero at the start; %d windows of %.0f ms: %.0f pages/s "
            "changed (median %d per window, %d hot pages in nearly every window), %d pages "
            "touched in all; working set (pages): %s" % (
                m.get("workload"), m.get("nonzero_at_start", 0), trace.npages,
                m.get("windows", 0), 1000 * m.get("window_s", 0), m.get("dirty_rate_pages_s", 0),
                int(np.median(m.get("pages_per_window") or [0])), m.get("hot_pages", 0),
                m.get("union_pages", 0), ws))
