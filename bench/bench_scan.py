"""Scan strategies vs guest size and dirty density: collect + scan of one slot
(sorted gfns out, log cleared and re-protected) per backend, the raw C call
without the Python wrapper, and two baselines on the same bitmap: numpy
flatnonzero (what a Python user would write) and a plain read-only C pass
(kd_bitmap_to_gfns: the floor of any scan that reads the whole bitmap).

Each round re-dirties the same scattered pages untimed (pedantic setup)."""
import numpy as np
import pytest

from pykvmdirty.analysis import compare as cmp
from pykvmdirty._native import ffi, lib

from benchutil import bench_sizes, make_vm, rounds, scattered, untimed, write_spread

SIZES = bench_sizes()
DIRTY = [0, 1000, 100000]
BACKENDS = ["flat", "twolevel", "bytemap", "ring", "kvm", "uffd"]


def _id(size, dirty):
    return "%sGiB-%ddirty" % (size, dirty)


CELLS = [(s, d) for s in SIZES for d in DIRTY]
IDS = [_id(s, d) for s, d in CELLS]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size,dirty", CELLS, ids=IDS)
def test_collect(benchmark, backend, size, dirty):
    npages = cmp.gib_to_pages(size)
    pages = scattered(npages, dirty)
    vcpus = cmp.ring_vcpus(dirty) if backend == "ring" else 1
    vm = make_vm(backend, npages, vcpus=vcpus)
    benchmark.group = "scan %s" % _id(size, dirty)
    benchmark.extra_info.update(size_gib=size, dirty=dirty, backend=backend,
                                log_bytes=cmp.log_bytes(backend, [(0, 0, npages)], vcpus))
    slow = backend in ("kvm", "uffd")
    try:
        found = benchmark.pedantic(vm.collect, args=(0,),
                                   setup=lambda: write_spread(vm, pages, vcpus),
                                   rounds=3 if slow else rounds(), iterations=1)
        assert np.array_equal(found, pages)
    finally:
        vm.close()


@pytest.mark.parametrize("backend", ["flat", "twolevel"])
@pytest.mark.parametrize("size,dirty", CELLS, ids=IDS)
def test_collect_raw_c(benchmark, backend, size, dirty):
    """kd_collect with a reused output buffer: the C cost without VM.collect's
    Python (argument checks, buffer allocation)."""
    npages = cmp.gib_to_pages(size)
    pages = scattered(npages, dirty)
    vm = make_vm(backend, npages)
    buf = np.empty(dirty + 64, dtype=np.uint64)  # a word's worth of slack: C stops early
    ptr = ffi.from_buffer("uint64_t[]", buf)
    res = ffi.new("struct kd_collect_result *")
    handle = vm.handle
    benchmark.group = "scan %s" % _id(size, dirty)
    benchmark.extra_info.update(size_gib=size, dirty=dirty, backend=backend + "-raw")

    def collect():
        return lib.kd_collect(handle, 0, 0, npages, ptr, buf.size, res)

    try:
        rc = benchmark.pedantic(collect, setup=lambda: untimed(vm.write, pages), rounds=rounds(),
                                iterations=1)
        assert rc == 0 and res.count == dirty
    finally:
        vm.close()


@pytest.mark.parametrize("baseline", ["flatnonzero", "read"])
@pytest.mark.parametrize("size,dirty", CELLS, ids=IDS)
def test_baseline(benchmark, baseline, size, dirty):
    npages = cmp.gib_to_pages(size)
    pages = scattered(npages, dirty)
    bm = cmp.pages_to_bitmap(pages, npages)
    out = np.empty(max(dirty, 1), dtype=np.uint64)
    benchmark.group = "scan %s" % _id(size, dirty)
    benchmark.extra_info.update(size_gib=size, dirty=dirty, backend=baseline,
                                bitmap_bytes=bm.nbytes)
    if baseline == "flatnonzero":
        found = benchmark.pedantic(cmp.flatnonzero_gfns, args=(bm,), rounds=rounds(),
                                   iterations=1)
    else:
        found = benchmark.pedantic(cmp.read_gfns, args=(bm, npages, out),
                                   rounds=rounds(), iterations=1)
    assert np.array_equal(found, pages)
