"""The C workload generators (kd_workload): seeded streams of gfns for the
kinds idle, uniform, hotspot, zipf, sequential and migration-test; and
WorkloadThreads, C threads (one per vCPU) running generators at a rate."""
import numbers
import threading
import weakref

import numpy as np

from .._native import ffi, lib
from ..errors import check
from .boundary import u64_ptr, uint_arg
from .constants import WORKLOAD_KINDS as KINDS
from .vm import WriteResult, write_events


def check_kind(kind):
    if kind not in KINDS:
        raise ValueError("unknown workload %r; choose from %s" % (kind, ", ".join(KINDS)))


def check_fraction(value, name, lo_open=False):
    if not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    v = float(value)
    ok = (0 < v <= 1) if lo_open else (0 <= v <= 1)
    if not ok:
        raise ValueError("%s must be in %s, got %r" % (name, "(0, 1]" if lo_open else "[0, 1]",
                                                       value))
    return v


def check_shape(hot_fraction, hot_share, zipf_s):
    """The distribution parameters, checked: (hot_fraction, hot_share, zipf_s)."""
    hot_fraction = check_fraction(hot_fraction, "hot_fraction", lo_open=True)
    hot_share = check_fraction(hot_share, "hot_share")
    if not isinstance(zipf_s, numbers.Real) or not 0 < float(zipf_s) <= 10:
        raise ValueError("zipf_s must be in (0, 10], got %r" % (zipf_s,))
    return hot_fraction, hot_share, float(zipf_s)


class Generator:
    """One seeded C generator over gfns [first_gfn, first_gfn + npages)."""

    def __init__(self, kind, first_gfn, npages, seed=0, hot_fraction=0.05, hot_share=0.9,
                 zipf_s=1.0):
        check_kind(kind)
        cfg = ffi.new("struct kd_workload_config *")
        cfg.kind = KINDS[kind]
        cfg.seed = int(seed) & (2**64 - 1)
        cfg.first_gfn = int(first_gfn)
        cfg.npages = int(npages)
        cfg.hot_fraction, cfg.hot_share, cfg.zipf_s = check_shape(hot_fraction, hot_share,
                                                                   zipf_s)
        if kind != "idle" and npages <= 0:
            raise ValueError("a %s workload needs pages, got npages=%d" % (kind, npages))
        out = ffi.new("kd_workload **")
        check(lib.kd_workload_create(cfg, out), "workload(%s)" % kind)
        self._h = ffi.gc(out[0], lib.kd_workload_destroy)
        self.kind = kind
        self._hint = ffi.new("uint64_t *")

    @property
    def handle(self):
        return self._h

    def generate(self, n, out=None):
        """Up to n next gfns (fewer at the end of a sweep) and the value hint
        (the sweep number for migration-test, else 0)."""
        if out is None:
            out = np.empty(max(int(n), 1), dtype=np.uint64)
        k = check(lib.kd_workload_generate(self._h, u64_ptr(out, True), int(n), self._hint),
                  "workload.generate")
        return out[:k], self._hint[0]


    def enter(self, vm, vcpu, n, value, out):
        """One guest entry (kd_workload_enter): up to n next gfns into out (a
        uint64 array the caller keeps), written as vCPU vcpu with the
        generator's value hint or `value`. Returns (the gfns, WriteResult,
        the value stored, the entry's write-side events {name: count})."""
        vcpu = uint_arg(vcpu, "vcpu", 32)
        if vcpu >= vm.vcpus:
            raise ValueError("vcpu must be below %d, got %d" % (vm.vcpus, vcpu))
        n = min(int(n), out.size)
        res = ffi.new("struct kd_write_result *")
        used = ffi.new("uint64_t *")
        k = check(lib.kd_workload_enter(self._h, vm.handle, vcpu, u64_ptr(out, True), n,
                                        uint_arg(value, "value"), used, res),
                  "workload(%s).enter(%d gfns, vcpu=%d)" % (self.kind, n, vcpu))
        return out[:k], WriteResult(res.applied, res.exit_reason), used[0], write_events(res)


def _stop_threads(handle, n, keep_alive):
    """Finalizer: stop, join and free the threads (keep_alive: VM, generators)."""
    st = ffi.new("struct kd_workload_thread_stats[]", n)
    rc = lib.kd_workload_threads_stop(handle, st, n)
    return rc, [dict(writes=st[i].writes, ring_full_waits=st[i].ring_full_waits,
                     error=st[i].error) for i in range(n)]


class WorkloadThreads:
    """kd_workload_threads: one C thread per generator writing into the VM at
    `rate` pages/s in real time. Same lifetime rules as Writers: the VM and
    the generators stay alive until the threads are joined (stop(), VM.close()
    or the finalizer)."""

    def __init__(self, vm, generators, rate, value_base, global_lock=None):
        native = vm.handle
        arr = ffi.new("kd_workload *[]", [g.handle for g in generators])
        out = ffi.new("kd_workload_threads **")
        self._n = len(generators)
        check(lib.kd_workload_threads_start(native, arr, self._n, uint_arg(rate, "rate"),
                                            uint_arg(value_base, "value_base"), out),
              "workload threads (%d threads, %d pages/s)" % (self._n, rate))
        self._handle = out[0]
        self._vm = vm
        self.stats = None  # per-thread stats once stopped (kept if a thread failed)
        # the lock (guest_exits.GlobalLock) must outlive the threads: kept with them
        self._finalizer = weakref.finalize(self, _stop_threads, self._handle, self._n,
                                           (native, list(generators), arr, global_lock))
        self._lock = threading.Lock()  # the handle is freed under it (stop)
        try:
            if global_lock is not None:
                check(lib.kd_workload_threads_set_bql(self._handle, global_lock.handle),
                      "workload threads: guest exits")
            vm.register_pool(self)
        except BaseException:  # refused (or the VM was closed): leave nothing running
            self._finalizer()
            raise

    @property
    def running(self):
        return self._finalizer.alive

    def throttle(self, percent):
        percent = uint_arg(percent, "percent", 32)
        with self._lock:
            if self._finalizer.alive:
                check(lib.kd_workload_threads_throttle(self._handle, percent),
                      "throttle(%d)" % percent)

    def stop(self):
        """Stop and join; returns per-thread stats (dicts: writes,
        ring_full_waits, error), or None if already stopped. Raises
        KvmDirtyError with the first thread error."""
        # The C stop ends and joins the threads itself, so holding the lock
        # across it makes a concurrent stop()/throttle() wait, never use a
        # freed handle; a stop() after it returns None.
        with self._lock:
            if not self._finalizer.alive:
                return None
            result = self._finalizer()
            if result is not None:
                self.stats = result[1]
        self._vm.unregister_pool(self)
        if result is None:
            return self.stats
        check(result[0], "workload threads")
        return self.stats

    def stop_and_join(self):
        self.stop()
