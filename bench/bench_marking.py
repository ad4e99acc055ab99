"""Marking throughput: 10^6 random gfns written by 1 or 2 C writer threads
(pykvmdirty.Writers: real pthreads acting as vCPUs) into flat and two-level
logs of a 64 GiB guest. Every round starts from a collected (re-protected)
log, so each first write to a page takes the write-fault path."""
import numpy as np
import pytest

import pykvmdirty as kd

from benchutil import GIB_PAGES, make_vm, rounds, untimed

NGFNS = 10 ** 6
SIZE_GIB = 64


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["flat", "twolevel"])
def test_mark(benchmark, backend, threads):
    npages = SIZE_GIB * GIB_PAGES
    gfns = np.random.default_rng(7).integers(0, npages, NGFNS, dtype=np.uint64)
    parts = np.array_split(gfns, threads)
    vm = make_vm(backend, npages, vcpus=threads)
    benchmark.group = "marking %d gfns" % NGFNS
    benchmark.extra_info.update(backend=backend, threads=threads, gfns=NGFNS)

    def run():
        with kd.Writers(vm, parts) as w:
            return int(w.join().sum())

    try:
        applied = benchmark.pedantic(run, setup=lambda: untimed(vm.collect, 0), rounds=rounds(5),
                                     iterations=1)
        assert applied == NGFNS
        med = benchmark.stats.stats.median
        benchmark.extra_info["ns_per_gfn_median"] = med * 1e9 / NGFNS
    finally:
        vm.close()


@pytest.mark.parametrize("backend", ["flat", "twolevel"])
def test_mark_python_call(benchmark, backend):
    """The same 10^6 gfns through one VM.write call (one vCPU, no threads)."""
    npages = SIZE_GIB * GIB_PAGES
    gfns = np.random.default_rng(7).integers(0, npages, NGFNS, dtype=np.uint64)
    vm = make_vm(backend, npages)
    benchmark.group = "marking %d gfns" % NGFNS
    benchmark.extra_info.update(backend=backend, threads=0, gfns=NGFNS)
    try:
        res = benchmark.pedantic(vm.write, args=(gfns,), setup=lambda: untimed(vm.collect, 0),
                                 rounds=rounds(5), iterations=1)
        assert res.applied == NGFNS
    finally:
        vm.close()
