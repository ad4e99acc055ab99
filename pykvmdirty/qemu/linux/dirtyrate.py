"""The Linux guest's dirty rate two ways on one running guest: QEMU 7.2's
``calc-dirty-rate`` (page-sampling) next to the whole-RAM snapshot diff the
workload model is built from (model.py), window for window.

Per round and window length T (whole seconds, as calc-dirty-rate takes):

1. ``calc-dirty-rate`` page-sampling over T s of the running guest, for
   each sample-pages value (QEMU hashes its samples at the start and the
   end: a page whose contents changed is dirty, as in the diff);
2. right after, the snapshot diff: ``stop``, save RAM, ``cont``, T s of
   running time, ``stop``, save, compare page by page, ``cont``.

Page sampling's 2-sigma band is binomial, 2 sqrt(p(1-p)/n) of the guest's
pages, n = sample-pages x guest size / GiB (QEMU: per RAMBlock, here one).
Under TCG QEMU 7.2's dirty-bitmap mode dies (qemu/dirtyrate.py): only
page-sampling is asked.
"""
import asyncio
import math
import os
from typing import List, Optional, Sequence

from ..dirtyrate import calc_dirty_rate
from ..errors import GuestStalled
from ..layout import PAGE
from . import memory
from .guest import LinuxProcess, boot_files

MIB = 1 << 20


def two_sigma_mib_s(rate_mib_s, calc_time, sample_pages, guest_size):
    """Page sampling's binomial 2-sigma band (MiB/s) around `rate_mib_s`."""
    n = max(1, sample_pages * guest_size >> 30)
    total = guest_size / MIB
    p = min(1.0, max(0.0, rate_mib_s * calc_time / total))
    return 2 * math.sqrt(p * (1 - p) / n) * total / calc_time


def model_rate_mib_s(trace_meta, window_s):
    """The model's rate for a window: its working set (pages in the union of
    consecutive measured windows, interpolated in the window's length) over
    the window, MiB/s; None beyond the curve."""
    ws = trace_meta.get("working_set") or []
    pts = [(0.0, 0.0)] + [(float(a), float(b)) for a, b in ws]
    for (a, pa), (b, pb) in zip(pts, pts[1:]):
        if a <= window_s <= b:
            pages = pa + (pb - pa) * (window_s - a) / (b - a)
            return pages * PAGE / MIB / window_s
    return None


async def _snapshot_window(vm, size, window_s, paths):
    await vm.cmd("stop")
    await memory.save(vm, size, paths[0])
    ran = await memory.run_window(vm, window_s)
    await memory.save(vm, size, paths[1])
    changed = memory.changed_pages(memory.pages(paths[0]), memory.pages(paths[1]))
    await vm.cmd("cont")
    return int(changed.size), ran


async def _measure(config, calc_times, sample_pages, rounds, warmup):
    size = config.guest_size
    kernel, initrd = boot_files(config.kernel, config.workload)
    d = memory.snapshot_dir()
    paths = [os.path.join(d, "pkd-rate-%d-%d" % (os.getpid(), i)) for i in range(2)]
    vm = LinuxProcess("measured", kernel, initrd, config.workload, size, "tcg"
                      if config.accel in ("auto", "tcg") else config.accel)
    rows = []
    try:
        await vm.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while (await vm.status()).pages < 2:
            if vm.returncode() is not None:
                raise vm.exited_error("boot")
            if loop.time() > deadline:
                raise GuestStalled("the Linux guest did not reach its workload in 90 s "
                                   "(console: %s)" % vm.console.tail())
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        for rnd in range(rounds):
            for t in calc_times:
                row = dict(workload=config.workload, round=rnd + 1, calc_time=t,
                           guest_size=size, loadavg=os.getloadavg()[0], qemu={})
                for n in sample_pages:
                    r = await calc_dirty_rate(vm, "page-sampling", t, n)
                    row["qemu"][str(n)] = dict(
                        mib_s=r["dirty_rate_mib_s"],
                        two_sigma_mib_s=two_sigma_mib_s(r["dirty_rate_mib_s"], t, n, size))
                pages, ran = await _snapshot_window(vm, size, t, paths)
                row.update(snapshot_pages=pages, snapshot_window_s=ran,
                           snapshot_mib_s=pages * PAGE / MIB / ran)
                rows.append(row)
        return rows
    finally:
        await vm.close()
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)


def side_by_side(config, calc_times: Sequence[int] = (1, 2),
                 sample_pages: Sequence[int] = (512, 4096), rounds=2, warmup=3.0,
                 model_meta: Optional[dict] = None) -> List[dict]:
    """Rows of QEMU's page-sampling rate and the snapshot diff's for the
    Linux guest of `config` (a QemuConfig, guest "linux"), with the model's
    rate for the same window where `model_meta` (a model trace's meta, of
    the same workload) is given."""
    if config.guest != "linux":
        raise ValueError("side_by_side measures the Linux guest (guest='linux')")
    rows = asyncio.run(_measure(config, list(calc_times), list(sample_pages), rounds, warmup))
    if model_meta is not None:
        if model_meta.get("workload") != config.workload:
            raise ValueError("the model is of %r, the guest runs %r"
                             % (model_meta.get("workload"), config.workload))
        for r in rows:
            r["model_mib_s"] = model_rate_mib_s(model_meta, r["calc_time"])
    return rows
