"""One VM used from several Python threads (issue 12, item 1): each thread
owns a vCPU and a slot, writes random pages and collects its slot; every
result (write's applied count, collect's gfns) must be its own. The C calls
release the GIL, so the threads really overlap."""
import threading

import numpy as np
import pytest

import pykvmdirty as kd

THREADS = 4
ROUNDS = 300
SLOT_PAGES = 1 << 14  # 64 MiB per slot


@pytest.mark.parametrize("backend", ["flat", "twolevel", "bytemap", "ring"])
def test_threads_each_get_their_own_results(backend):
    kw = dict(ring_entries=kd.bindings.constants.RING_MAX_ENTRIES) if backend == "ring" else {}
    with kd.VM(backend, vcpus=THREADS, **kw) as vm:
        for t in range(THREADS):
            vm.set_user_memory_region(t, (t * 2 + 1) * SLOT_PAGES * kd.PAGE_SIZE,
                                      SLOT_PAGES * kd.PAGE_SIZE, kd.MEM_LOG_DIRTY_PAGES)
        for t in range(THREADS):
            vm.collect(t)  # start of logging
        errors = []
        start = threading.Barrier(THREADS)

        def worker(t):
            rng = np.random.default_rng(t)
            base = (t * 2 + 1) * SLOT_PAGES
            start.wait()
            try:
                for r in range(ROUNDS):
                    # a different count per thread and round: a foreign result shows
                    n = 1 + (r * 37 + t * 101) % (512 + 64 * t)
                    pages = np.sort(rng.choice(SLOT_PAGES, n, replace=False)).astype(np.uint64)
                    gfns = pages + np.uint64(base)
                    res = vm.write(gfns, vcpu=t, value=r + 1)
                    if res.applied != n or res.exit_reason != kd.EXIT_NONE:
                        errors.append("thread %d round %d: write applied %d of %d (exit %d)"
                                      % (t, r, res.applied, n, res.exit_reason))
                    got = vm.collect(t)
                    if got.size != n or not np.array_equal(got, gfns):
                        errors.append("thread %d round %d: collect returned %d gfns, wrote %d"
                                      % (t, r, got.size, n))
            except Exception as e:  # noqa: BLE001 - reported below with the thread
                errors.append("thread %d: %s: %s" % (t, type(e).__name__, e))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, "%d wrong results, first: %s" % (len(errors), errors[:5])
