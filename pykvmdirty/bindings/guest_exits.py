"""The global lock (QEMU's BQL) and the guest exits that take it (kd_bql), and
the kernel-side stall harness (kd_collect_stall_run).

``GlobalLock`` is one lock with its exit statistics: in real time the
migration loop calls ``lock``/``unlock`` and the workload's vCPU threads
perform the exits (``ThreadWorkload(..., global_lock=gl)``); on the virtual
clock the loop records ``hold`` intervals and ``model`` plays the exits
against them. Every wait is counted in C (histogram, max, blocked time);
Python reads totals and a bounded event log, never one event at a time.
"""
import math
import numbers
from typing import Any, Dict

import numpy as np

from .._native import ffi, lib
from ..errors import check
from ..units import NS
from .boundary import u64_ptr as _u64_ptr

HOLDERS = {
    lib.KD_BQL_HOLDER_NONE: "nothing: the lock was free (the delay is the host's scheduling)",
    lib.KD_BQL_HOLDER_ITERATION: "migration iteration (sync + send, iothread)",
    lib.KD_BQL_HOLDER_SYNC: "dirty-bitmap sync",
    lib.KD_BQL_HOLDER_EXIT: "other vCPUs' exits",
    lib.KD_BQL_HOLDER_COLLECT: "collector call",
}
HOLDER_IDS = {"iteration": lib.KD_BQL_HOLDER_ITERATION, "sync": lib.KD_BQL_HOLDER_SYNC,
              "collect": lib.KD_BQL_HOLDER_COLLECT}
HOLDER_NAMES = {lib.KD_BQL_HOLDER_NONE: "free", lib.KD_BQL_HOLDER_ITERATION: "iteration",
                lib.KD_BQL_HOLDER_SYNC: "sync", lib.KD_BQL_HOLDER_EXIT: "exit",
                lib.KD_BQL_HOLDER_COLLECT: "collect"}
EVENT_DTYPE = np.dtype([("at_ns", "<u8"), ("dur_ns", "<u8"), ("type", "<u2"),
                        ("holder", "<u2"), ("vcpu", "<u4")])
assert EVENT_DTYPE.itemsize == ffi.sizeof("struct kd_bql_event")


def _real(value, name, lo=0.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < lo:
        raise ValueError("%s must be a finite number >= %s, got %r" % (name, lo, value))
    return float(value)


def _int(value, name, lo, hi=None):
    """An integer argument in [lo, hi], or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError("%s must be an integer, got %r" % (name, value))
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ValueError("%s must be in %d..%s, got %r" % (name, lo, "" if hi is None else hi,
                                                           value))
    return v


def exit_timing(exit_rate, exit_service):
    """(interval ns, service ns) from exits/s per vCPU and seconds per exit,
    checked: the service must fit between two exits."""
    rate = _real(exit_rate, "exit_rate")
    service = _real(exit_service, "exit_service")
    if rate == 0:
        return 0, int(round(service * NS))
    interval = int(round(NS / rate))
    service_ns = int(round(service * NS))
    if interval <= 0:
        raise ValueError("exit_rate %r exits/s per vCPU is above 1e9" % (exit_rate,))
    if service_ns >= interval:
        raise ValueError("exit_service %r s must be shorter than the time between two exits "
                         "of a vCPU (1/exit_rate = %g s)" % (exit_service, interval / NS))
    return interval, service_ns


class GlobalLock:
    """The global lock of one run: ``GlobalLock(vcpus, exit_rate, exit_service,
    virtual=False)``; exit_rate in exits/s per vCPU (0: none), exit_service in
    seconds the lock is held per exit."""

    def __init__(self, vcpus, exit_rate, exit_service, virtual=False, log_cap=1 << 16):
        self.interval_ns, self.service_ns = exit_timing(exit_rate, exit_service)
        vcpus = _int(vcpus, "vcpus", 1, int(lib.KD_MAX_VCPUS))
        cfg = ffi.new("struct kd_bql_config *")
        cfg.nvcpus = int(vcpus)
        cfg.flags = lib.KD_BQL_VIRTUAL if virtual else 0
        cfg.exit_interval_ns = self.interval_ns
        cfg.service_ns = self.service_ns
        out = ffi.new("kd_bql **")
        check(lib.kd_bql_create(cfg, out), "GlobalLock(vcpus=%d)" % vcpus)
        self._h = ffi.gc(out[0], lib.kd_bql_destroy)
        self.vcpus = int(vcpus)
        self.virtual = bool(virtual)
        self.exit_rate = float(exit_rate)
        self._log = np.zeros(int(log_cap), dtype=EVENT_DTYPE)
        check(lib.kd_bql_set_log(self._h, ffi.cast("struct kd_bql_event *",
                                                    ffi.from_buffer(self._log)),
                                 self._log.size), "GlobalLock.set_log")

    @property
    def handle(self):
        return self._h

    def lock(self, holder):
        check(lib.kd_bql_lock(self._h, HOLDER_IDS[holder]), "GlobalLock.lock(%s)", holder)

    def unlock(self):
        """Release what lock() took; KvmDirtyError(EPERM) if lock() holds nothing."""
        check(lib.kd_bql_unlock(self._h), "GlobalLock.unlock() without a lock() held")

    def hold(self, holder, start_ns, end_ns):
        """Virtual clock: the lock was held [start_ns, end_ns) by holder."""
        check(lib.kd_bql_hold(self._h, HOLDER_IDS[holder], int(start_ns), int(end_ns)),
              "GlobalLock.hold(%s, %d, %d)", (holder, start_ns, end_ns))

    def model(self, t0_ns, t1_ns):
        """Virtual clock: play the exits of [t0, t1) against the holds (once)."""
        check(lib.kd_bql_model(self._h, int(t0_ns), int(t1_ns)),
              "GlobalLock.model(%d, %d)", (t0_ns, t1_ns))

    def poll(self, vcpu):
        """Real time, on a vCPU's thread: perform its exit if one is due (tests)."""
        return check(lib.kd_bql_poll(self._h, int(vcpu)), "GlobalLock.poll(%d)", vcpu)

    def stats(self):
        st = ffi.new("struct kd_bql_stats *")
        check(lib.kd_bql_stats(self._h, st), "GlobalLock.stats")
        d: Dict[str, Any] = {k: int(getattr(st, k)) for k in (
            "exits", "waited_exits", "wait_sum_ns", "wait_max_ns", "wait_max_at_ns",
            "wait_max_holder", "wait_max_vcpu", "blocked_ns", "log_used", "log_dropped")}
        d["holds"] = {HOLDER_NAMES[i]: dict(count=int(st.holds[i]),
                                            sum_ns=int(st.hold_sum_ns[i]),
                                            max_ns=int(st.hold_max_ns[i]))
                      for i in range(1, 5)}
        return d

    def histogram(self):
        h = np.zeros(lib.KD_LAT_BUCKETS, dtype=np.uint64)
        check(lib.kd_bql_histogram(self._h, _u64_ptr(h), lib.KD_LAT_BUCKETS),
              "GlobalLock.histogram")
        return h

    def events(self):
        """The logged waits (> 0) and loop holds, as a numpy structured array."""
        n = self.stats()["log_used"]
        return self._log[:n].copy()


STALL_COLLECTORS = {"none": lib.KD_STALL_NONE, "get": lib.KD_STALL_GET,
                    "clear": lib.KD_STALL_CLEAR, "ring": lib.KD_STALL_RING}


def collect_stall(vm, slot, collector, duration, period=0.05, guest_pages=4096, batch=16,
                  chunk_pages=1 << 18):
    """Run the kernel-side stall harness once; returns (result dict, histogram
    of guest-entry durations in the latency buckets)."""
    if collector not in STALL_COLLECTORS:
        raise ValueError("unknown collector %r; choose from %s"
                         % (collector, ", ".join(STALL_COLLECTORS)))
    cfg = ffi.new("struct kd_stall_config *")
    cfg.slot = int(slot)
    cfg.collector = STALL_COLLECTORS[collector]
    cfg.duration_ns = int(_real(duration, "duration") * NS)
    cfg.period_ns = int(_real(period, "period") * NS)
    if cfg.duration_ns <= 0:
        raise ValueError("duration must be > 0 seconds, got %r" % (duration,))
    guest_pages = _int(guest_pages, "guest_pages", 1)
    batch = _int(batch, "batch", 1, int(lib.KD_STALL_MAX_BATCH))
    if collector == "clear" and _int(chunk_pages, "chunk_pages", 64, 1 << 31) % 64:
        raise ValueError("chunk_pages must be a positive multiple of 64, got %r"
                         % (chunk_pages,))
    cfg.guest_pages = int(guest_pages)
    cfg.batch = int(batch)
    cfg.chunk_pages = int(chunk_pages) if collector == "clear" else 0
    res = ffi.new("struct kd_stall_result *")
    hist = np.zeros(lib.KD_LAT_BUCKETS, dtype=np.uint64)
    check(lib.kd_collect_stall_run(vm.handle, cfg, res, _u64_ptr(hist), lib.KD_LAT_BUCKETS),
          "collect_stall(%s, slot %d)", (collector, slot))
    out = {k: int(getattr(res, k)) for k in (
        "guest_pages_written", "guest_entries", "guest_ns", "ring_full_waits", "stall_max_ns",
        "stall_max_at_ns", "stall_max_cpu_ns", "collects", "collect_sum_ns", "collect_max_ns",
        "collect_calls", "call_max_ns")}
    return out, hist

