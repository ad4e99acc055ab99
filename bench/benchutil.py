"""Helpers shared by the bench_*.py suites (not collected: no bench_ prefix)."""
import os

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty.analysis import compare as cmp

GIB_PAGES = 1 << 18


def bench_sizes(default=(1, 64, 512)):
    """Guest sizes in GiB: PYKVMDIRTY_BENCH_SIZES (e.g. "1,64") or default."""
    env = os.environ.get("PYKVMDIRTY_BENCH_SIZES")
    if not env:
        return list(default)
    sizes = [float(x) for x in env.split(",") if x.strip()]
    for s in sizes:
        cmp.gib_to_pages(s)  # ValueError names a bad size
    return [int(s) if s.is_integer() else s for s in sizes]


def scattered(npages, n, seed=0):
    """n distinct sorted pages of [0, npages) (the same generator as compare)."""
    return cmp.dirty_pages(npages, n, seed)


def make_vm(backend, npages, slots=1, vcpus=1, ring_entries=None, tracking="write_protect"):
    """A VM with `slots` equal slots covering npages, dirty logging on."""
    if backend in ("kvm", "uffd"):
        ok, why = kd.backend_available(backend)
        if not ok:
            pytest.skip("%s backend unavailable here: %s" % (backend, why))
    kw = {}
    if backend == "ring":
        kw["ring_entries"] = ring_entries or 65536
    vm = kd.VM(backend, vcpus=vcpus, dirty_tracking=tracking, **kw)
    per = -(-npages // slots)
    for i in range(slots):
        n = min(per, npages - i * per)
        vm.set_user_memory_region(i, (i * per) << 12, n << 12, kd.MEM_LOG_DIRTY_PAGES)
    return vm


def write_spread(vm, pages, vcpus=1):
    for i, part in enumerate(np.array_split(pages, vcpus)):
        vm.write(part, vcpu=i)


def rounds(default=10):
    """Rounds per benchmark: PYKVMDIRTY_BENCH_ROUNDS or default."""
    return int(os.environ.get("PYKVMDIRTY_BENCH_ROUNDS", default))


def untimed(fn, *args):
    """Call fn for a pedantic setup; return None (pytest-benchmark takes a
    setup's return value as the benchmarked call's arguments)."""
    fn(*args)


def kvm_reason():
    """None if a kvm VM runs its guest here, else the reason (for skips)."""
    ok, why = kd.backend_available("kvm")
    if not ok:
        return why or "unavailable"
    try:
        with kd.VM("kvm") as vm:
            vm.set_user_memory_region(0, 0, 2 << 20, kd.MEM_LOG_DIRTY_PAGES)
            if vm.write([1]).applied != 1:
                return "the guest did not run"
    except OSError as e:
        return str(e)
    return None


def raw_get(vm, npages):
    """The classic KVM_GET_DIRTY_LOG of slot 0 as one C call (no Python
    wrapper in the timing) into a preallocated bitmap faulted in up front."""
    from pykvmdirty._native import ffi, lib
    from pykvmdirty.errors import check
    nwords = -(-npages // 64)
    bitmap = np.ones(nwords, dtype=np.uint64)  # written: faulted in before timing
    ptr = ffi.from_buffer("uint64_t[]", bitmap)
    handle = vm.handle

    def get():
        check(lib.kd_get_dirty_log(handle, 0, ptr, nwords), "get_dirty_log")
        return bitmap
    return get
