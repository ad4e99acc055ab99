"""The sender (kd_sender, csrc/migrate/sendpath.c): the C scan-and-send loop that
reads dirty pages, checks for zero pages, encodes wire batches, applies the
rate limit and the time cap, and measures sample-to-send latency.

:class:`SendRegion` is one memslot seen by the sender, with the per-page
bookkeeping (last version sent, sent bitmap) kept across passes. It keeps the
C VM alive while it exists (the region points into the VM's slot memory)
and pins its slot: deleting the slot while the region lives is refused
(EBUSY), as for a numpy view of the slot's memory.
"""
import errno
from typing import Tuple

import numpy as np

from .._native import ffi, lib
from ..errors import KvmDirtyError, check
from .boundary import as_gfn_array, byte_ptr, u64_ptr, uint_arg
from .constants import LAT_BUCKETS, SEND_FULL

SEND_STAT_FIELDS = tuple(
    name for name, _ in ffi.typeof("struct kd_send_stats").fields if name != "reserved")
#: lowest latency (ns) of each histogram bucket, and the end of the last one
LATENCY_BUCKET_FLOORS = np.array([lib.kd_latency_bucket_floor(i) for i in range(LAT_BUCKETS)]
                                 + [lib.kd_latency_bucket_floor(LAT_BUCKETS)], dtype=np.float64)


def latency_percentiles(hist, qs):
    """Quantiles qs (0..1) in ns of a C latency histogram (KD_LAT_BUCKETS
    buckets, any of the migrate layer's): each the middle of its bucket."""
    total = int(hist.sum())
    if not total:
        return [0 for _ in qs]
    cum = np.cumsum(hist)
    out = []
    for q in qs:
        b = int(np.searchsorted(cum, q * total, side="left"))
        lo, hi = LATENCY_BUCKET_FLOORS[b], LATENCY_BUCKET_FLOORS[b + 1]
        out.append(int(lo if hi <= lo + 1 else (lo + hi) / 2))
    return out


def clock_ns():
    """CLOCK_MONOTONIC in ns: the clock the real-time sender and collect use."""
    return lib.kd_clock_ns()


class SendRegion:
    """One memslot as a send source (struct kd_send_region)."""

    def __init__(self, vm, slot, base_gfn, npages):
        slot = uint_arg(slot, "slot", 32)
        base_gfn = uint_arg(base_gfn, "base_gfn")
        npages = uint_arg(npages, "npages")
        # pinned: the slot (and so its memory) outlives this region
        memory, slot_pages = vm.pin_slot_memory(slot, self)
        if slot_pages != npages:
            raise ValueError("slot %d has %d pages, not %d" % (slot, slot_pages, npages))
        self.slot = slot
        self.base_gfn = base_gfn
        self.npages = npages
        self._vm_native = vm.handle  # the region points into it: keep it alive
        self.last_version = np.zeros(npages, dtype=np.uint64)
        self.sent = np.zeros((npages + 63) // 64, dtype=np.uint64)
        r = self._region = ffi.new("struct kd_send_region *")
        r.memory = memory
        r.base_gfn = base_gfn
        r.npages = npages
        r.last_version = u64_ptr(self.last_version, True)
        r.sent = u64_ptr(self.sent, True)
        r.vm = self._vm_native
        r.slot = slot
        #: "contents" or "versions" (the VM's page model: what memory holds)
        self.page_model = vm.page_model
        r.flags = lib.KD_SEND_REGION_VERSIONS if vm.page_model == "versions" else 0
        self._clear_arrays: Tuple[np.ndarray, ...] = ()

    def set_clear(self, shift, mask):
        """Chunked clear: CLEAR each 2**shift-page chunk (pages set in mask, the
        slot-relative GET snapshot) just before its first page is sent."""
        shift = uint_arg(shift, "clear_shift", 5)
        mask = np.ascontiguousarray(mask, dtype=np.uint64)
        if mask.size * 64 < self.npages:
            raise ValueError("clear mask has %d words, slot %d needs %d"
                             % (mask.size, self.slot, (self.npages + 63) // 64))
        nchunks = (self.npages + (1 << shift) - 1) >> shift
        cleared = np.zeros(nchunks, dtype=np.uint64)
        self._clear_arrays = (mask, cleared)  # C points into them until clear_off()
        r = self._region
        r.clear_shift = shift
        r.clear_mask = u64_ptr(mask)
        r.chunk_cleared_ns = u64_ptr(cleared, True)

    def clear_off(self):
        r = self._region
        r.clear_shift = 0
        r.clear_mask = ffi.NULL
        r.chunk_cleared_ns = ffi.NULL
        self._clear_arrays = ()


class Sender:
    """kd_sender: see kvmdirty.h. virtual_clock selects the deterministic
    clock and its cost model (link_bandwidth, page_cost_ns, clear_call_ns,
    reprotect_ns); otherwise CLOCK_MONOTONIC and real time."""

    def __init__(self, rate_limit=0, max_wait_ns=0, zero_as_full=False, virtual_clock=False,
                 link_bandwidth=0, page_cost_ns=0, clear_call_ns=0, reprotect_ns=0,
                 rate_yield=False):
        cfg = ffi.new("struct kd_send_config *")
        cfg.rate_limit = uint_arg(rate_limit, "rate_limit")
        cfg.max_wait_ns = uint_arg(max_wait_ns, "max_wait_ns")
        cfg.flags = ((lib.KD_SEND_ZERO_AS_FULL if zero_as_full else 0)
                     | (lib.KD_SEND_VIRTUAL_CLOCK if virtual_clock else 0)
                     | (lib.KD_SEND_RATE_YIELD if rate_yield else 0))
        if virtual_clock:
            cfg.link_bandwidth = uint_arg(link_bandwidth, "link_bandwidth")
            cfg.page_cost_ns = uint_arg(page_cost_ns, "page_cost_ns")
            cfg.clear_call_ns = uint_arg(clear_call_ns, "clear_call_ns")
            cfg.reprotect_ns = uint_arg(reprotect_ns, "reprotect_ns")
        out = ffi.new("kd_sender **")
        check(lib.kd_sender_create(cfg, out), "kd_sender_create")
        self._s = ffi.gc(out[0], lib.kd_sender_destroy)
        self._pos = ffi.new("uint64_t *")
        self._flushlen = ffi.new("uint64_t *")
        self.buffer = None      # batch buffer (None: count without encoding)
        self.window_log = None  # accounted bytes per closed window, if asked

    # -- setup ---------------------------------------------------------------
    def set_buffer(self, nbytes):
        """Encode into a batch buffer of nbytes (kept by the sender)."""
        buf = np.empty(uint_arg(nbytes, "batch_bytes"), dtype=np.uint8)
        check(lib.kd_sender_set_buffer(self._s, byte_ptr(buf, True), buf.size),
              "kd_sender_set_buffer(%d bytes)" % buf.size)
        self.buffer = buf

    def set_window_log(self, nwindows):
        log = np.zeros(uint_arg(nwindows, "window_log"), dtype=np.uint64)
        check(lib.kd_sender_set_window_log(self._s, u64_ptr(log, True), log.size),
              "kd_sender_set_window_log(%d)" % log.size)
        self.window_log = log

    def close_window(self):
        check(lib.kd_sender_close_window(self._s), "kd_sender_close_window")

    def set_rate_limit(self, rate_limit):
        check(lib.kd_sender_set_rate_limit(self._s, uint_arg(rate_limit, "rate_limit")),
              "kd_sender_set_rate_limit")

    def set_costs(self, page_cost_ns, link_bandwidth):
        """Virtual clock: price pages from now on at page_cost_ns plus record
        bytes / link_bandwidth."""
        check(lib.kd_sender_set_costs(self._s, uint_arg(page_cost_ns, "page_cost_ns"),
                                      uint_arg(link_bandwidth, "link_bandwidth")),
              "kd_sender_set_costs")

    # -- clock ---------------------------------------------------------------
    def now(self):
        return lib.kd_sender_now(self._s)

    def advance(self, ns):
        check(lib.kd_sender_advance(self._s, uint_arg(ns, "ns")), "kd_sender_advance")

    def wait_budget(self, deadline_ns=0):
        """rate_yield: wait until a page fits the rate budget; SEND_DONE, or
        SEND_DEADLINE (virtual clock) if deadline_ns came first."""
        return check(lib.kd_sender_wait_budget(self._s, uint_arg(deadline_ns, "deadline_ns")),
                     "kd_sender_wait_budget")

    def iteration_begin(self):
        check(lib.kd_sender_iteration_begin(self._s), "kd_sender_iteration_begin")

    # -- stream ------------------------------------------------------------
    def flush(self):
        """Seal the open batch: a memoryview of its bytes in the batch buffer
        (valid until the next call that encodes), or None if nothing to send."""
        check(lib.kd_sender_flush(self._s, self._flushlen), "kd_sender_flush")
        n = self._flushlen[0]
        if not n or self.buffer is None:
            return None
        return memoryview(self.buffer)[:n]

    def put_mem_size(self, gpas, sizes):
        """The MEM_SIZE record: SEND_DONE, or SEND_FULL (flush, call again)."""
        gpas = as_gfn_array(gpas, "gpas")
        sizes = as_gfn_array(sizes, "sizes")
        if gpas.size != sizes.size:
            raise ValueError("%d gpas but %d sizes" % (gpas.size, sizes.size))
        return check(lib.kd_sender_put_mem_size(self._s, u64_ptr(gpas), u64_ptr(sizes),
                                                gpas.size),
                     "kd_sender_put_mem_size(%d regions)" % gpas.size)

    def put_eos(self):
        """The end-of-stream record: SEND_DONE, or SEND_FULL (flush, call again)."""
        return check(lib.kd_sender_put_eos(self._s), "kd_sender_put_eos")

    def put_control(self, put, sink_send, what):
        """Write a control record with put() (put_mem_size/put_eos bound to
        their arguments), flushing to sink_send(bytes) when the batch is full;
        a record that does not fit an empty batch raises KvmDirtyError."""
        rc = put()
        if rc == SEND_FULL:
            data = self.flush()
            if data is not None:
                sink_send(data)
            rc = put()
            if rc == SEND_FULL:
                raise KvmDirtyError(errno.E2BIG, "%s does not fit an empty batch buffer of %d bytes"
                                    % (what, 0 if self.buffer is None else self.buffer.size))

    def rewind(self, pos=0):
        """Start the next send_pages work at entry pos (its first page by
        default; with gfns None, the slot-relative page to start from)."""
        self._pos[0] = uint_arg(pos, "pos")

    def send_pages(self, region, gfns, n, sample_ns, deadline_ns=0):
        """kd_send_pages of gfns[:n] (uint64 array; None: the region's pages
        0..n) from the current position (rewind() resets it):
        SEND_DONE, SEND_FULL, SEND_TIME_CAP or SEND_DEADLINE; errors raise.
        n beyond the array (or the region) is a ValueError: C reads n entries."""
        n = uint_arg(n, "n")
        if gfns is None:
            if n > region.npages:
                raise ValueError("n %d is past the end of the region (%d pages)"
                                 % (n, region.npages))
            ptr = ffi.NULL
        else:
            gfns = as_gfn_array(gfns)
            if n > gfns.size:
                raise ValueError("n %d is past the end of gfns (%d entries)" % (n, gfns.size))
            ptr = u64_ptr(gfns)
        return check(lib.kd_send_pages(self._s, region._region, ptr, n, self._pos,
                                       sample_ns, deadline_ns),
                     "kd_send_pages(slot %d)" % region.slot)

    @property
    def position(self):
        """Pages of the current send_pages work already done."""
        return self._pos[0]

    # -- results -------------------------------------------------------------
    def stats(self):
        st = ffi.new("struct kd_send_stats *")
        check(lib.kd_sender_stats(self._s, st), "kd_sender_stats")
        return {k: getattr(st, k) for k in SEND_STAT_FIELDS}

    def latency_histogram(self, reset=True):
        """Copy (and reset) the latency histogram: LAT_BUCKETS uint64 counts."""
        hist = np.zeros(LAT_BUCKETS, dtype=np.uint64)
        check(lib.kd_sender_latency_histogram(self._s, u64_ptr(hist, True), LAT_BUCKETS,
                                              1 if reset else 0),
              "kd_sender_latency_histogram")
        return hist
