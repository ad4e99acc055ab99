"""C calls timed with nothing else inside the timed interval: buffers and
pointers are prepared once, so ``calibrate`` measures the kernel (or the
emulator), not argument conversion. Each method returns the call's ns."""
import time

import numpy as np

from .._native import ffi, lib
from ..errors import check
from .boundary import u64_ptr, uint_arg
from .constants import DIRTY_GFN_DTYPE


class TimedLogCalls:
    """KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG of one slot, and ring harvest."""

    def __init__(self, vm, slot):
        self.slot = uint_arg(slot, "slot", 32)
        info = vm.slot_info(self.slot)
        self._vm_native = vm.handle
        self.npages = info.npages
        self.base_gfn = info.base_gfn
        self.nwords = (info.npages + 63) // 64
        self.bitmap = np.zeros(max(self.nwords, 1), dtype=np.uint64)
        self._bitmap_ptr = u64_ptr(self.bitmap, True)
        self._mask = np.full(max(self.nwords, 1), np.uint64(0xFFFFFFFFFFFFFFFF),
                             dtype=np.uint64)
        self._mask_ptr = u64_ptr(self._mask)
        self._ring = None
        self._count = ffi.new("uint64_t *")

    def get(self):
        """KVM_GET_DIRTY_LOG into self.bitmap."""
        t0 = time.perf_counter_ns()
        rc = lib.kd_get_dirty_log(self._vm_native, self.slot, self._bitmap_ptr, self.nwords)
        t1 = time.perf_counter_ns()
        check(rc, "KVM_GET_DIRTY_LOG(slot %d)" % self.slot)
        return t1 - t0

    def clear(self, first, num):
        """KVM_CLEAR_DIRTY_LOG of every page in [first, first + num)."""
        first = uint_arg(first, "first")
        num = uint_arg(num, "num", 32)
        if num > self.nwords * 64:
            raise ValueError("num %d is past the slot's %d pages" % (num, self.npages))
        t0 = time.perf_counter_ns()
        rc = lib.kd_clear_dirty_log(self._vm_native, self.slot, first, num, self._mask_ptr)
        t1 = time.perf_counter_ns()
        check(rc, "KVM_CLEAR_DIRTY_LOG(slot %d)" % self.slot)
        return t1 - t0

    def harvest(self, vcpu, cap):
        """Harvest up to cap ring entries of vcpu: (ns, entries harvested)."""
        vcpu = uint_arg(vcpu, "vcpu", 32)
        if self._ring is None or self._ring.size < cap:
            self._ring = np.empty(max(cap, 1), dtype=DIRTY_GFN_DTYPE)
            self._ring_ptr = ffi.cast("struct kd_dirty_gfn *", ffi.from_buffer(self._ring))
        t0 = time.perf_counter_ns()
        rc = lib.kd_ring_harvest(self._vm_native, vcpu, self._ring_ptr, cap, self._count)
        t1 = time.perf_counter_ns()
        check(rc, "harvest(vcpu=%d)" % vcpu)
        return t1 - t0, self._count[0]
