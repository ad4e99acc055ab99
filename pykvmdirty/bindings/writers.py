"""Writers: real C threads (pthreads) acting as vCPUs, so the GIL hides no race.

Thread i runs vCPU i and writes its gfn list `loops` times (value + loop
index); on a dirty-ring-full exit it waits for the collector's reset.

Lifetime (invariant): while the threads may run, the C VM and the gfn arrays
they read stay referenced by this object's finalizer, which stops and joins
the threads if the object is dropped without join() (or at interpreter exit).
The VM knows its running Writers: close() joins them, slot deletion is refused.

Threads: every method may be called from any thread. The C handle is freed
only under ``self._lock`` and never while another thread is inside a call on
it: ``stop()`` holds the lock for its (short) C call; ``join()`` marks the
writers as being joined, waits for the threads WITHOUT the lock (so that a
``stop()`` from another thread can still end them), and frees under the lock.
A second ``join()`` raises ValueError; ``stop_and_join()`` from any number
of threads returns once the threads are joined (whoever joined them).
"""
import threading
import weakref

import numpy as np

from .._native import ffi, lib
from ..errors import check
from .boundary import as_gfn_array, u64_ptr, uint_arg

RUNNING, JOINING, JOINED = "running", "joining", "joined"


def _stop_and_join(handle, nthreads, keep_alive):
    """Finalizer: stop and join the threads (keep_alive: the VM and gfn arrays)."""
    lib.kd_writers_stop(handle)
    applied = ffi.new("uint64_t[]", nthreads)
    return lib.kd_writers_join(handle, applied), [applied[i] for i in range(nthreads)]


class Writers:
    """Start with ``Writers(vm, [gfns_vcpu0, gfns_vcpu1, ...])``; ``join()``
    returns how many gfns each thread applied (all of them unless stopped)."""

    def __init__(self, vm, gfn_lists, loops=1, value=1):
        if not gfn_lists:
            raise ValueError("gfn_lists must name at least one vCPU's gfns")
        if len(gfn_lists) > vm.vcpus:
            raise ValueError("%d writer threads need %d vCPUs, the VM has %d"
                             % (len(gfn_lists), len(gfn_lists), vm.vcpus))
        arrays = [as_gfn_array(g, "gfn_lists[%d]" % i) for i, g in enumerate(gfn_lists)]
        ptrs = [u64_ptr(a) for a in arrays]
        ptr_array = ffi.new("uint64_t *[]", [ffi.cast("uint64_t *", p) for p in ptrs])
        counts = ffi.new("uint64_t[]", [a.size for a in arrays])
        out = ffi.new("kd_writers **")
        native = vm.handle
        self._n = len(arrays)
        self._vm = vm
        self._lock = threading.Lock()
        self._state = RUNNING
        self._joined = threading.Event()
        check(lib.kd_writers_start(native, self._n,
                                   ffi.cast("const uint64_t *const *", ptr_array), counts,
                                   uint_arg(loops, "loops"), uint_arg(value, "value"), out),
              "Writers(%d threads)" % self._n)
        self._handle = out[0]
        self._finalizer = weakref.finalize(self, _stop_and_join, self._handle, self._n,
                                           (native, arrays, ptrs, ptr_array))
        try:
            vm.register_pool(self)
        except BaseException:  # the VM was closed meanwhile: leave nothing running
            self.stop_and_join()
            raise

    @property
    def running(self):
        """True until the threads are joined (join(), stop_and_join() or the finalizer)."""
        with self._lock:
            return self._live()

    def _live(self):
        # joining: the finalizer is detached but the handle lives until joined
        return self._state == JOINING or (self._state == RUNNING and self._finalizer.alive)

    def stop(self):
        """Ask the threads to stop early (join() still waits for them)."""
        with self._lock:
            if self._live():
                lib.kd_writers_stop(self._handle)

    def join(self):
        """Wait for the threads; returns applied counts (numpy uint64 per thread).
        ValueError if they are joined, or being joined by another thread."""
        with self._lock:
            if self._state != RUNNING:
                raise ValueError("writers already joined" if self._state == JOINED
                                 else "writers are being joined by another thread")
            keep = self._finalizer.detach()
            if keep is None:  # the finalizer ran (interpreter exit)
                self._state = JOINED
                self._joined.set()
                raise ValueError("writers already joined")
            self._state = JOINING
        try:
            lib.kd_writers_wait(self._handle)  # no lock: stop() may still come
            applied = np.zeros(self._n, dtype=np.uint64)
            with self._lock:
                rc = lib.kd_writers_join(self._handle, u64_ptr(applied, True))
                self._state = JOINED
        finally:
            self._joined.set()
            self._vm.unregister_pool(self)
            del keep  # the VM and the gfn arrays may go now
        check(rc, "Writers.join()")
        return applied

    def stop_and_join(self):
        """Stop and join if still running (what VM.close() does); idempotent
        and safe from several threads: returns once the threads are joined."""
        self.stop()
        try:
            self.join()
        except ValueError:  # joined, or being joined elsewhere: wait for it
            self._joined.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_and_join()
