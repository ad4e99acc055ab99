"""kd_collect_slots / VM.collect_slots: several whole slots in one call give
what kd_collect of each slot in turn gives (every emulated backend), resume
where a small buffer fills without losing or repeating a page, and every bad
argument is refused before any slot is touched."""
import errno

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty._native import ffi, lib

LOG = kd.MEM_LOG_DIRTY_PAGES
SLOT_PAGES = [1 << 16, 3 << 14, 1 << 18]  # three slots, back to back


def _vm(backend):
    vm = kd.VM(backend, ring_entries=1 << 16) if backend == "ring" else kd.VM(backend)
    base = 0
    for i, n in enumerate(SLOT_PAGES):
        vm.set_user_memory_region(i, base << 12, n << 12, LOG)
        base += n
    vm.set_user_memory_region(3, base << 12, 1 << 24, 0)  # no log
    for i in range(3):
        vm.collect(i)
    return vm


def _pages(seed, n=3000):
    return np.random.default_rng(seed).integers(0, sum(SLOT_PAGES), n, dtype=np.uint64)


@pytest.mark.parametrize("backend", kd.EMULATED_BACKENDS)
def test_same_pages_as_per_slot_collect(backend):
    with _vm(backend) as a, _vm(backend) as b:
        for seed in range(4):
            pages = _pages(seed)
            a.write(pages)
            b.write(pages)
            want = np.concatenate([b.collect(i) for i in range(3)])
            got = a.collect_slots()
            assert np.array_equal(got, want)
            assert np.array_equal(got, np.unique(pages))
        assert a.collect_slots().size == 0


@pytest.mark.parametrize("backend", kd.EMULATED_BACKENDS)
def test_resume_with_a_small_buffer(backend):
    """cap 64: many calls, each resumes at (resume_index, resume_page)."""
    pages = _pages(7)
    with _vm(backend) as vm:
        vm.write(pages)
        ids = ffi.new("uint32_t[]", [2, 0, 1])
        buf = np.empty(64, dtype=np.uint64)
        res = ffi.new("struct kd_collect_slots_result *")
        index = page = 0
        out, calls = [], 0
        while index < 3:
            rc = lib.kd_collect_slots(vm.handle, ids, 3, index, page,
                                      ffi.from_buffer("uint64_t[]", buf), 64, res)
            assert rc == 0
            out.append(buf[:res.count].copy())
            index, page, calls = res.resume_index, res.resume_page, calls + 1
        got = np.concatenate(out)
        bases = np.cumsum([0] + SLOT_PAGES)
        want = np.concatenate([np.unique(pages[(pages >= bases[i]) & (pages < bases[i + 1])])
                               for i in (2, 0, 1)])
        assert np.array_equal(got, want)
        assert calls > len(want) // 64
        assert vm.collect_slots().size == 0


def test_bad_arguments_leave_the_log_unchanged():
    with _vm("hier") as vm:
        vm.write(np.array([1, SLOT_PAGES[0] + 1], dtype=np.uint64))
        buf = np.empty(64, dtype=np.uint64)
        ptr = ffi.from_buffer("uint64_t[]", buf)
        res = ffi.new("struct kd_collect_slots_result *")

        def call(ids, first_index=0, first_page=0, cap=64, gfns=ptr, result=res, n=None):
            c = ffi.new("uint32_t[]", ids or [0])
            return lib.kd_collect_slots(vm.handle, c, len(ids) if n is None else n,
                                        first_index, first_page, gfns, cap, result)
        assert call([0, 1, 1 << 31]) == -errno.EINVAL   # bad id (address space)
        assert call([0, 1, 3]) == -errno.ENOENT         # slot 3 has no log
        assert call([0, 1, 9]) == -errno.ENOENT         # no slot 9
        assert call([0, 1], first_index=3) == -errno.EINVAL
        assert call([0, 1], first_page=SLOT_PAGES[0] + 1) == -errno.EINVAL
        assert call([0, 1], first_index=2, first_page=1) == -errno.EINVAL
        assert call([0, 1], cap=63) == -errno.EINVAL
        assert call([0, 1], gfns=ffi.NULL) == -errno.EFAULT
        assert call([0, 1], result=ffi.NULL) == -errno.EINVAL
        assert lib.kd_collect_slots(ffi.NULL, ffi.NULL, 0, 0, 0, ptr, 64, res) == -errno.EINVAL
        assert call([], n=0) == 0 and res.count == 0 and res.resume_index == 0
        with pytest.raises(kd.KvmDirtyError, match="slots=.*3"):
            vm.collect_slots([0, 3])
        with pytest.raises(ValueError, match="slot"):
            vm.collect_slots([-1])
        assert list(vm.collect_slots()) == [1, SLOT_PAGES[0] + 1]


@pytest.mark.parametrize("backend", ["kvm", "uffd"])
def test_real_backends(backend):
    ok, why = kd.backend_available(backend)
    if not ok:
        pytest.skip("%s backend unavailable here: %s" % (backend, why))
    with kd.VM(backend) as vm:
        vm.set_user_memory_region(0, 0, 64 << 20, LOG)
        vm.set_user_memory_region(1, 64 << 20, 64 << 20, LOG)
        vm.collect_slots()
        vm.write(np.array([3, 16384 + 5, 20000], dtype=np.uint64))
        assert list(vm.collect_slots()) == [3, 16384 + 5, 20000]
        assert vm.collect_slots().size == 0
