"""Writers: real C threads (pthreads) acting as vCPUs, so the GIL hides no race.

Thread i runs vCPU i and writes its gfn list `loops` times (value + loop
index); on a dirty-ring-full exit it waits for the collector's reset.
"""
import numpy as np

from .._native import ffi, lib
from ..errors import check
from .vm import _u64_ptr, _uint, as_gfn_array


class Writers:
    """Start with ``Writers(vm, [gfns_vcpu0, gfns_vcpu1, ...])``; ``join()``
    returns how many gfns each thread applied (all of them unless stopped)."""

    def __init__(self, vm, gfn_lists, loops=1, value=1):
        if not gfn_lists:
            raise ValueError("gfn_lists must name at least one vCPU's gfns")
        if len(gfn_lists) > vm.vcpus:
            raise ValueError("%d writer threads need %d vCPUs, the VM has %d"
                             % (len(gfn_lists), len(gfn_lists), vm.vcpus))
        self._arrays = [as_gfn_array(g, "gfn_lists[%d]" % i) for i, g in enumerate(gfn_lists)]
        self._ptrs = [_u64_ptr(a) for a in self._arrays]
        ptrs = ffi.new("uint64_t *[]", [ffi.cast("uint64_t *", p) for p in self._ptrs])
        self._ptr_array = ptrs
        counts = ffi.new("uint64_t[]", [a.size for a in self._arrays])
        out = ffi.new("kd_writers **")
        self._vm = vm
        check(lib.kd_writers_start(vm.handle, len(self._arrays),
                                   ffi.cast("const uint64_t *const *", ptrs), counts,
                                   _uint(loops, "loops"), _uint(value, "value"), out),
              "Writers(%d threads)" % len(self._arrays))
        self._handle = out[0]

    def stop(self):
        if self._handle is not None:
            lib.kd_writers_stop(self._handle)

    def join(self):
        """Wait for the threads; returns applied counts (numpy uint64 per thread)."""
        if self._handle is None:
            raise ValueError("writers already joined")
        applied = np.zeros(len(self._arrays), dtype=np.uint64)
        handle, self._handle = self._handle, None
        check(lib.kd_writers_join(handle, _u64_ptr(applied)), "Writers.join()")
        return applied

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self.stop()
            self.join()
