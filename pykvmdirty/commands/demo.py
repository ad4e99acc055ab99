"""``pykvmdirty demo``: one guest size, a few scattered dirty pages, every
emulated backend: how long collect+scan takes and what the kernel paid."""
import time

import numpy as np

from ..bindings.constants import EMULATED_BACKENDS, MEM_LOG_DIRTY_PAGES, RING_MAX_ENTRIES
from ..bindings.vm import VM


def register(sub):
    p = sub.add_parser("demo", help="a quick built-in demo: collect+scan per backend")
    p.add_argument("--gib", type=int, default=64, help="guest size in GiB (default 64)")
    p.add_argument("--dirty", type=int, default=1000, help="scattered dirty pages (default 1000)")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=run)


def run(args):
    if args.gib <= 0 or args.dirty < 0 or args.repeats <= 0:
        raise ValueError("--gib and --repeats must be positive and --dirty non-negative, got "
                         "%d, %d, %d" % (args.gib, args.dirty, args.repeats))
    npages = args.gib << 18
    pages = np.random.default_rng(0).choice(npages, size=min(args.dirty, npages),
                                            replace=False).astype(np.uint64)
    print("%d GiB guest, %d dirty pages, median of %d collects"
          % (args.gib, pages.size, args.repeats))
    print("%-9s %12s %10s %14s %12s" % ("backend", "collect µs", "found", "reprotected",
                                         "words read"))
    for backend in EMULATED_BACKENDS:
        with VM(backend, ring_entries=RING_MAX_ENTRIES if backend == "ring" else None) as vm:
            vm.set_user_memory_region(0, 0, npages << 12, MEM_LOG_DIRTY_PAGES)
            times = []
            for _ in range(args.repeats):
                vm.write(pages)
                vm.reset_stats()
                t0 = time.perf_counter_ns()
                found = vm.collect(0)
                times.append(time.perf_counter_ns() - t0)
            st = vm.stats
            print("%-9s %12.1f %10d %14d %12d" % (
                backend, np.median(times) / 1e3, found.size, st["pages_reprotected"],
                st["words_scanned"] + st["summary_words_scanned"]
                + st["bytemap_bytes_scanned"] // 8))
    return 0
