"""Pre-copy live migration: the controller around the C scan-and-send loop.

``migrate(...)`` builds a guest (a VM with guest memory in ``slots`` memslots),
starts a workload, and migrates it to a sink:

1. bulk pass: every page of every slot is sent;
2. passes: sync the dirty log with a strategy, send the dirty pages
   (C: read, zero check, encode, rate limit, time cap), repeat;
3. when the expected downtime (pending dirty bytes / measured bandwidth) is
   below ``downtime_limit``, or after ``max_passes``: stop the workload, final
   sync, send the rest without the rate limit, end the stream;
4. verify the destination page by page (64-bit hashes) against the source.

Sync strategies: ``global`` (collect every slot at the start of a pass, QEMU's
migration_bitmap_sync), ``per-slot`` (collect each slot just before scanning
it, the 2010 proposal), ``chunked-clear`` (manual protect: GET without
clearing at pass start, CLEAR each 2^clear_shift-page chunk just before its
first page is sent, QEMU's clear_bmap), ``ring`` (harvest and reset the dirty
rings at pass start and whenever a vCPU's ring fills).

Clocks: ``mode="virtual"`` is deterministic: a virtual clock advanced by a
cost model (collect: per call, word, re-protected page, ring entry; send: per
page read and bytes / link_bandwidth), the workload writing what its rate
gives for each elapsed ``step``. ``mode="realtime"`` runs the workload as C
threads (vCPUs) concurrently with the loop; each C call of the loop runs
without the GIL.

Sample-to-send latency is, per page sent, the sender clock when the page
left minus the time its dirty information was taken: the collect (or GET for
the bulk pass) that reported it, or for chunked-clear the CLEAR of its chunk
(the moment its write protection was re-armed). A redundant send is a page
whose first 8 bytes equal those of its previous send: workloads store a new
value on every write, so that is "content unchanged since last sent".
"""
import json
import math
import numbers
import sys
import time

import numpy as np

from ._native import ffi, lib
from .errors import check
from .sinks import LocalSink, NullSink, SinkError, TcpSink, page_hashes
from .trace import Recorder, Trace, TraceWorkload
from .trace import load as load_trace
from .vm import EMULATED_BACKENDS, MEM_LOG_DIRTY_PAGES, PAGE_SIZE, VM, _u64_ptr
from .workloads import ThreadWorkload, VirtualWorkload, WorkloadSpec

STRATEGIES = ("global", "per-slot", "chunked-clear", "ring")
MODES = ("virtual", "realtime")
ZERO_ACCOUNTING = ("header", "full")
NS = 1_000_000_000
MiB = 1 << 20
GiB = 1 << 30
POPULATE_VALUE = 1 << 62  # what populate stores: no workload value collides with it

#: virtual-clock cost model (ns), from the measurements in FACTS.md
COST_MODEL = dict(
    call_ns=1000,          # one ioctl-like call
    word_ns=6.6,           # one 64-bit log word read (27 us per GiB of slot)
    bytemap_byte_ns=0.1,   # 128 MiB byte map in ~12 ms
    reprotect_ns=200,      # one page write-protected again
    flush_ns=2000,         # one remote TLB flush
    harvest_ns=20,         # one ring entry harvested
    reset_ns=100,          # one ring entry reset
    gfn_ns=1,              # one gfn emitted by a scan
    page_ns=341,           # read + zero-check one 4 KiB page (12 GB/s)
)


class MigrationError(RuntimeError):
    """The migration could not complete (sink failure, verification setup)."""


class PassMetrics:
    """One pass: what the sync found and what the loop sent."""
    FIELDS = ("index", "kind", "dirty_found", "pages_sent", "zero_pages", "bytes",
              "accounted_bytes", "redundant", "collect_ns", "scan_ns", "send_ns",
              "duration_ns", "latency_p50_ns", "latency_p99_ns", "latency_mean_ns",
              "latency_max_ns", "time_cap_exits", "rate_waits", "throttle_pct",
              "expected_downtime_ns", "bandwidth")

    def __init__(self, index, kind):
        for f in self.FIELDS:
            setattr(self, f, 0)
        self.index = index
        self.kind = kind  # "bulk", "iterate", "stop-and-copy"

    def as_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    def __repr__(self):
        return "<pass %d %s dirty=%d sent=%d>" % (self.index, self.kind, self.dirty_found,
                                                   self.pages_sent)


class MigrationReport:
    """Per-pass metrics and totals of one migration."""

    def __init__(self, config):
        self.config = config
        self.passes = []
        self.total_ns = 0
        self.downtime_ns = 0
        self.verified = None        # True/False, None for the null sink
        self.mismatched_pages = []  # gfns (first 16) whose hashes differ
        self.converged = False
        self.auto_converge_triggers = 0
        self.final_throttle_pct = 0
        self.workload_writes = 0
        self.ring_full_events = 0
        self.window_log = None      # accounted bytes per closed window (if asked)
        self.window_budget = None
        self.destination = None
        self.vm_stats = None

    @property
    def npasses(self):
        return len(self.passes)

    def total(self, field):
        return sum(getattr(p, field) for p in self.passes)

    @property
    def bytes(self):
        return self.total("bytes")

    def as_dict(self):
        return dict(
            config=self.config, passes=[p.as_dict() for p in self.passes],
            totals=dict(passes=self.npasses, total_ns=self.total_ns,
                        downtime_ns=self.downtime_ns, bytes=self.bytes,
                        accounted_bytes=self.total("accounted_bytes"),
                        pages_sent=self.total("pages_sent"),
                        zero_pages=self.total("zero_pages"),
                        redundant=self.total("redundant"),
                        time_cap_exits=self.total("time_cap_exits"),
                        verified=self.verified, converged=self.converged,
                        auto_converge_triggers=self.auto_converge_triggers,
                        final_throttle_pct=self.final_throttle_pct,
                        workload_writes=self.workload_writes,
                        ring_full_events=self.ring_full_events,
                        mismatched_pages=self.mismatched_pages),
            destination=self.destination, vm_stats=self.vm_stats)

    def to_json(self, path=None):
        text = json.dumps(self.as_dict(), indent=1, default=_json_default)
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def summary(self):
        lines = ["%-5s %-13s %10s %10s %9s %11s %9s %9s %9s %10s %10s" % (
            "pass", "kind", "dirty", "sent", "zero", "MiB", "redund", "coll ms", "send ms",
            "lat p50ms", "lat p99ms")]
        for p in self.passes:
            lines.append("%-5d %-13s %10d %10d %9d %11.1f %9d %9.2f %9.1f %10.2f %10.2f" % (
                p.index, p.kind, p.dirty_found, p.pages_sent, p.zero_pages, p.bytes / MiB,
                p.redundant, p.collect_ns / 1e6, p.send_ns / 1e6, p.latency_p50_ns / 1e6,
                p.latency_p99_ns / 1e6))
        lines.append("passes %d, total %.3f s, downtime %.1f ms, %.1f MiB sent, redundant %d, "
                     "verified: %s%s" % (
                         self.npasses, self.total_ns / 1e9, self.downtime_ns / 1e6,
                         self.bytes / MiB, self.total("redundant"),
                         {True: "yes", False: "NO", None: "n/a (null sink)"}[self.verified],
                         ", auto-converge throttle %d%%" % self.final_throttle_pct
                         if self.auto_converge_triggers else ""))
        return "\n".join(lines)

    def plot(self, path):
        """PNG of per-pass dirty pages, sent pages and latency (matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise RuntimeError("--plot needs matplotlib: pip install 'pykvmdirty[plot]'") \
                from None
        idx = [p.index for p in self.passes]
        fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        a.plot(idx, [p.dirty_found for p in self.passes], "o-", label="dirty pages found")
        a.plot(idx, [p.pages_sent for p in self.passes], "s-", label="pages sent")
        a.plot(idx, [p.redundant for p in self.passes], "x-", label="redundant sends")
        a.set_yscale("symlog")
        a.set_ylabel("pages")
        a.legend()
        b.plot(idx, [p.latency_p50_ns / 1e6 for p in self.passes], "o-", label="p50")
        b.plot(idx, [p.latency_p99_ns / 1e6 for p in self.passes], "s-", label="p99")
        b.set_ylabel("sample-to-send latency (ms)")
        b.set_xlabel("pass")
        b.legend()
        c = self.config
        fig.suptitle("%s / %s / %s, %s" % (c["backend"], c["strategy"], c["workload"]["kind"],
                                           c["mode"]))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(repr(o))


# ---------------------------------------------------------------------------
# argument checks

def _number(value, name, lo=None, hi=None, integer=False, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    if integer and not float(value).is_integer():
        raise ValueError("%s must be an integer, got %r" % (name, value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("%s must be finite, got %r" % (name, value))
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError("%s must be %s %s, got %r" % (name, ">" if lo_open else ">=", lo, value))
    if hi is not None and value > hi:
        raise ValueError("%s must be <= %s, got %r" % (name, hi, value))
    return int(value) if integer else value


def parse_size(text, name="size"):
    """'4GiB', '512MiB', '4096', '1.5G' -> bytes."""
    if isinstance(text, numbers.Integral) and not isinstance(text, bool):
        return int(text)
    if not isinstance(text, str):
        raise TypeError("%s must be a size like '4GiB', got %r" % (name, text))
    t = text.strip().lower().replace(" ", "")
    units = (("tib", 1 << 40), ("gib", GiB), ("mib", MiB), ("kib", 1 << 10), ("t", 1 << 40),
             ("g", GiB), ("m", MiB), ("k", 1 << 10), ("b", 1), ("", 1))
    for suffix, mult in units:
        if t.endswith(suffix):
            num = t[:len(t) - len(suffix)] if suffix else t
            try:
                return int(float(num) * mult)
            except ValueError:
                break
    raise ValueError("%s must be a size like '4GiB', got %r" % (name, text))


# ---------------------------------------------------------------------------

class _Slot:
    """One memslot and the sender's per-page bookkeeping for it."""

    def __init__(self, vm, slot_id, base_gfn, npages):
        self.id = slot_id
        self.base_gfn = base_gfn
        self.npages = npages
        self.nwords = (npages + 63) // 64
        info = ffi.new("struct kd_slot_info *")
        check(lib.kd_slot_info(vm.handle, slot_id, info), "slot_info(%d)" % slot_id)
        if info.memory == ffi.NULL:
            raise MigrationError("slot %d has no guest memory" % slot_id)
        self.memory_ptr = info.memory
        self.last_version = np.zeros(npages, dtype=np.uint64)
        self.sent = np.zeros(self.nwords, dtype=np.uint64)
        self.region = ffi.new("struct kd_send_region *")
        r = self.region
        r.memory = info.memory
        r.base_gfn = base_gfn
        r.npages = npages
        r.last_version = ffi.from_buffer("uint64_t[]", self.last_version)
        r.sent = ffi.from_buffer("uint64_t[]", self.sent)
        r.vm = vm.handle
        r.slot = slot_id
        self._keep = []

    def memory(self):
        return np.frombuffer(ffi.buffer(self.memory_ptr, self.npages * PAGE_SIZE),
                             dtype=np.uint8)

    def set_clear(self, shift, mask):
        r = self.region
        if shift is None:
            r.clear_shift = 0
            r.clear_mask = ffi.NULL
            r.chunk_cleared_ns = ffi.NULL
            self._keep = []
            return
        nchunks = (self.npages + (1 << shift) - 1) >> shift
        cleared = np.zeros(nchunks, dtype=np.uint64)
        self._keep = [mask, cleared]
        r.clear_shift = shift
        r.clear_mask = ffi.from_buffer("uint64_t[]", mask)
        r.chunk_cleared_ns = ffi.from_buffer("uint64_t[]", cleared)


class _Controller:
    def __init__(self, cfg, vm, slots, sender, sink, workload, threads, progress):
        self.cfg = cfg
        self.vm = vm
        self.slots = slots
        self.s = sender
        self.sink = sink
        self.wl = workload          # virtual workload (or None)
        self.threads = threads      # ThreadWorkload (or None)
        self.progress = progress
        self.virtual = cfg["mode"] == "virtual"
        self.step = cfg["step_ns"]
        self.deadline = 0
        self.wl_time = 0            # virtual workload has written up to here
        self.carry = []             # gfns reaped early (ring full), for the next sync
        self.pos = ffi.new("uint64_t *")
        self.stats = ffi.new("struct kd_send_stats *")
        self.hist = np.zeros(lib.KD_LAT_BUCKETS, dtype=np.uint64)
        self.floors = np.array([lib.kd_latency_bucket_floor(i)
                                for i in range(lib.KD_LAT_BUCKETS + 1)], dtype=np.float64)
        self.buf = None
        if sink.encodes:
            self.buf = np.empty(cfg["batch_bytes"], dtype=np.uint8)
            check(lib.kd_sender_set_buffer(sender, ffi.from_buffer(self.buf), self.buf.size),
                  "set_buffer")
        self.flushlen = ffi.new("uint64_t *")
        self.ring_full_events = 0
        self.bases = np.array([sl.base_gfn for sl in slots], dtype=np.uint64)
        self._last_progress = 0.0
        self.stopped = False

    # -- clock ---------------------------------------------------------------
    def now(self):
        return lib.kd_sender_now(self.s)

    def charge(self, ns):
        """Virtual: advance the clock by a modelled cost, letting the workload run."""
        if self.virtual and ns > 0:
            check(lib.kd_sender_advance(self.s, int(ns)), "advance")
            self.run_workload()

    def run_workload(self):
        if not self.virtual or self.wl is None or self.stopped:
            return
        now = self.now()
        if now > self.wl_time:
            self.wl.advance(self.wl_time, now)
            self.wl_time = now

    # -- sync --------------------------------------------------------------
    def _stats_cost(self, before, after):
        d = {k: after[k] - before[k] for k in after}
        c = self.cfg["cost_model"]
        calls = d["get_calls"] + d["clear_calls"] + d["collect_calls"]
        return (calls * c["call_ns"]
                + (d["words_scanned"] + d["summary_words_scanned"]) * c["word_ns"]
                + d["bytemap_bytes_scanned"] * c["bytemap_byte_ns"]
                + d["pages_reprotected"] * c["reprotect_ns"]
                + d["tlb_flushes"] * c["flush_ns"]
                + d["ring_harvested"] * c["harvest_ns"]
                + d["ring_reset"] * c["reset_ns"]
                + d["pages_collected"] * c["gfn_ns"])

    def _timed(self, fn, *args, extra_calls=0):
        """Run a sync call; returns (result, cost ns): modelled (virtual) or measured."""
        if self.virtual:
            before = self.vm.stats
            out = fn(*args)
            cost = self._stats_cost(before, self.vm.stats) + extra_calls * \
                self.cfg["cost_model"]["call_ns"]
            self.charge(cost)
            return out, int(cost)
        t0 = time.perf_counter_ns()
        out = fn(*args)
        return out, time.perf_counter_ns() - t0

    def _harvest_all(self):
        parts = []
        for v in range(self.vm.vcpus):
            e = self.vm.harvest(v)
            if e.size:
                parts.append(self.vm.entries_to_gfns(e))
        self.vm.reset_dirty_rings()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def reap(self, vcpu=None):
        """A ring filled (or is filling): take its entries now, send them next pass."""
        self.ring_full_events += 1
        if self.cfg["strategy"] == "ring":
            gfns, _ = self._timed(self._harvest_all, extra_calls=self.vm.vcpus + 1)
        else:  # collect every slot: on a ring VM that harvests and resets
            parts = []
            for sl in self.slots:
                g, _ = self._timed(self.vm.collect, sl.id)
                parts.append(g)
            gfns = np.concatenate(parts)
        if gfns.size:
            self.carry.append(gfns)

    def _maybe_reap_realtime(self):
        if self.virtual or self.vm.backend not in ("ring", "kvm") or not self.vm.ring_entries:
            return
        for v in range(self.vm.vcpus):
            used, limit = self.vm.ring_usage(v)
            if used * 2 >= limit:
                self.reap(v)
                return

    def _take_carry(self):
        if not self.carry:
            return None
        g = np.concatenate(self.carry)
        self.carry = []
        return g

    def _split(self, gfns):
        """Sorted unique gfns -> per-slot arrays."""
        gfns = np.unique(gfns)
        cuts = np.searchsorted(gfns, self.bases)
        cuts = np.append(cuts, gfns.size)
        return [gfns[cuts[i]:cuts[i + 1]] for i in range(len(self.slots))]

    def sync_all(self, final=False):
        """global/ring/chunked-clear sync of every slot. Returns (per-slot work
        items, collect ns, scan ns)."""
        strategy = self.cfg["strategy"]
        collect_ns = scan_ns = 0
        items = []
        if strategy == "ring":
            gfns, c = self._timed(self._harvest_all, extra_calls=self.vm.vcpus + 1)
            collect_ns += c
            carry = self._take_carry()
            if carry is not None:
                gfns = np.concatenate([gfns, carry])
            t0 = time.perf_counter_ns()
            per = self._split(gfns)
            scan_ns += self._scan_cost(gfns.size, t0)
            sample = self.now()
            items = [(sl, g, sample, None) for sl, g in zip(self.slots, per)]
        elif strategy == "chunked-clear" and not final:
            carry = self._take_carry()
            per_carry = self._split(carry) if carry is not None else None
            for i, sl in enumerate(self.slots):
                bm, c = self._timed(self.vm.get_dirty_log, sl.id)
                collect_ns += c
                t0 = time.perf_counter_ns()
                g = _bitmap_to_gfns(bm, sl.npages, sl.base_gfn)
                scan_ns += self._scan_cost(sl.nwords, t0, per="word")
                if per_carry is not None and per_carry[i].size:
                    g = np.union1d(g, per_carry[i])
                items.append((sl, g, self.now(), bm))
        else:  # global, and every final sync: collect and clear everything
            carry = self._take_carry()
            per_carry = self._split(carry) if carry is not None else None
            for i, sl in enumerate(self.slots):
                g, c = self._timed(self.vm.collect, sl.id)
                collect_ns += c
                if per_carry is not None and per_carry[i].size:
                    g = np.union1d(g, per_carry[i])
                items.append((sl, g, self.now(), None))
        return items, collect_ns, scan_ns

    def _scan_cost(self, n, t0, per="gfn"):
        if self.virtual:
            c = self.cfg["cost_model"]
            cost = n * (c["word_ns"] if per == "word" else c["gfn_ns"])
            self.charge(cost)
            return int(cost)
        return time.perf_counter_ns() - t0

    # -- send --------------------------------------------------------------
    def flush(self):
        if self.buf is None:
            return
        check(lib.kd_sender_flush(self.s, self.flushlen), "flush")
        n = self.flushlen[0]
        if n:
            self.sink.send(memoryview(self.buf)[:n])

    def send(self, sl, gfns, sample, bitmap=None, final=False, pm=None, progress=None):
        """Send gfns (None: the whole slot) of slot sl. Returns send ns."""
        if bitmap is not None:
            sl.set_clear(self.cfg["clear_shift"], bitmap)
        t0 = self.now() if self.virtual else time.perf_counter_ns()
        n = sl.npages if gfns is None else gfns.size
        ptr = ffi.NULL if gfns is None else _u64_ptr(gfns)
        self.pos[0] = 0
        while True:
            deadline = self.deadline if (self.virtual and not final) else 0
            rc = lib.kd_send_pages(self.s, sl.region, ptr, n, self.pos, sample, deadline)
            if rc == lib.KD_SEND_DONE:
                break
            if rc == lib.KD_SEND_FULL:
                self.flush()
            elif rc == lib.KD_SEND_TIME_CAP:
                # between iterations: what QEMU's migration thread does
                check(lib.kd_sender_iteration_begin(self.s), "iteration_begin")
            elif rc == lib.KD_SEND_DEADLINE:
                self.deadline = self.now() + self.step
            else:
                check(rc, "kd_send_pages(slot %d)" % sl.id)
            if self.virtual and not final:
                self.run_workload()
            elif not final:
                self._maybe_reap_realtime()
            if progress:
                progress(self.pos[0], n)
        if self.virtual and not final:
            self.run_workload()
        if bitmap is not None:
            sl.set_clear(None, None)
        end = self.now() if self.virtual else time.perf_counter_ns()
        return end - t0

    def stats_now(self):
        check(lib.kd_sender_stats(self.s, self.stats), "stats")
        st = self.stats
        return {k: getattr(st, k) for k in (
            "pages", "zero_pages", "wire_bytes", "header_bytes", "accounted_bytes", "redundant",
            "batches", "rate_waits", "time_cap_exits", "lat_count", "lat_sum_ns", "lat_max_ns")}

    def finish_pass(self, pm, before, t_start):
        after = self.stats_now()
        d = {k: after[k] - before[k] for k in after}
        pm.pages_sent = d["pages"]
        pm.zero_pages = d["zero_pages"]
        pm.bytes = d["wire_bytes"] + d["header_bytes"]
        pm.accounted_bytes = d["accounted_bytes"]
        pm.redundant = d["redundant"]
        pm.time_cap_exits = d["time_cap_exits"]
        pm.rate_waits = d["rate_waits"]
        pm.latency_mean_ns = d["lat_sum_ns"] / d["lat_count"] if d["lat_count"] else 0
        pm.latency_max_ns = after["lat_max_ns"]
        check(lib.kd_sender_latency_histogram(self.s, ffi.from_buffer("uint64_t[]", self.hist),
                                              lib.KD_LAT_BUCKETS, 1), "histogram")
        pm.latency_p50_ns, pm.latency_p99_ns = self.percentiles(self.hist, (0.5, 0.99))
        end = self.now() if self.virtual else time.perf_counter_ns()
        pm.duration_ns = end - t_start
        pm.bandwidth = pm.bytes * NS / pm.duration_ns if pm.duration_ns else 0.0

    def percentiles(self, hist, qs):
        total = int(hist.sum())
        if not total:
            return [0 for _ in qs]
        cum = np.cumsum(hist)
        out = []
        for q in qs:
            b = int(np.searchsorted(cum, q * total, side="left"))
            lo, hi = self.floors[b], self.floors[b + 1]
            out.append(int(lo if hi <= lo + 1 else (lo + hi) / 2))
        return out

    def progress_cb(self, pass_index, total):
        if not self.progress:
            return None
        state = {"base": 0}

        def cb(done, n, _state=state):
            now = time.monotonic()
            if now - self._last_progress < 0.1:
                return
            self._last_progress = now
            self.progress(pass_index, _state["base"] + done, total)
        return cb, state


def _bitmap_to_gfns(bitmap, npages, base):
    cap = npages
    out = np.empty(max(cap, 1), dtype=np.uint64)
    n = lib.kd_bitmap_to_gfns(_u64_ptr(bitmap), npages, base, _u64_ptr(out), cap)
    check(n, "kd_bitmap_to_gfns")
    return out[:n].copy() if n < cap // 4 else out[:n]


def _progress_printer(stream=sys.stderr, width=30):
    def show(pass_index, done, total):
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        stream.write("\rpass %3d [%-*s] %5.1f%% %d/%d pages" % (
            pass_index, width, bar, frac * 100, done, total))
        stream.flush()

    def end_pass(pm):
        stream.write("\r\033[K")
        stream.write("pass %3d %-13s dirty %9d sent %9d zero %9d  %8.1f MiB  lat p99 %8.2f ms"
                     "%s\n" % (pm.index, pm.kind, pm.dirty_found, pm.pages_sent, pm.zero_pages,
                               pm.bytes / MiB, pm.latency_p99_ns / 1e6,
                               "  throttle %d%%" % pm.throttle_pct if pm.throttle_pct else ""))
        stream.flush()
    show.end_pass = end_pass
    return show


def make_sink(sink):
    if sink is None or sink == "local":
        return LocalSink()
    if sink == "null":
        return NullSink()
    if isinstance(sink, str) and sink.startswith("tcp://"):
        return TcpSink(sink[len("tcp://"):])
    if isinstance(sink, str):
        raise ValueError("unknown sink %r; use 'null', 'local', 'tcp://HOST:PORT' or a sink "
                         "object" % sink)
    for attr in ("open", "send", "finish", "encodes"):
        if not hasattr(sink, attr):
            raise TypeError("sink object %r lacks %r" % (sink, attr))
    return sink


def migrate(guest_size="2GiB", slots=4, backend="flat", strategy="global",
            workload="hotspot", rate=20000, hot_fraction=0.05, hot_share=0.9, zipf_s=1.0,
            seed=0, trace=None, record=None, mode="virtual", vcpus=2,
            bandwidth=128 * MiB, link_bandwidth=1250 * 1000 * 1000, downtime_limit=0.3,
            max_wait=0.05, max_passes=30, auto_converge=False, zero_pages="header",
            clear_shift=18, populate=0.25, fill="version", sink="local", step=0.01,
            cost_model=None, batch_bytes=MiB, ring_entries=4096,
            dirty_tracking="write_protect", window_log=0, progress=None, verify=True,
            duration_limit=None):
    """Migrate a freshly built guest; returns a MigrationReport.

    guest_size: bytes or a string like "2GiB", split into `slots` memslots.
    strategy: "global", "per-slot", "chunked-clear" (clear_shift 6..31) or "ring".
    workload: "idle", "uniform", "hotspot", "zipf", "sequential", "migration-test"
      at `rate` pages/s (or trace: a trace file / Trace to replay, virtual mode).
    mode: "virtual" (deterministic, `step` seconds per workload interval) or
      "realtime" (C writer threads, one per vCPU).
    bandwidth: rate limit in bytes/s (0 = none); link_bandwidth: virtual transfer
      speed. downtime_limit, max_wait: seconds. zero_pages: "header" (charge 9
      bytes) or "full" (charge a page). populate: fraction of pages written
      before migration; fill "random" fills them with random bytes instead.
    sink: "local" (in-process destination), "null", "tcp://HOST:PORT" or an object.
    window_log: keep the accounted bytes of the first N rate-limit windows.
    """
    # ---- arguments ----
    guest_bytes = parse_size(guest_size, "guest_size")
    if guest_bytes <= 0 or guest_bytes % PAGE_SIZE:
        raise ValueError("guest_size must be a positive multiple of %d bytes, got %d"
                         % (PAGE_SIZE, guest_bytes))
    nslots = _number(slots, "slots", lo=1, hi=4096, integer=True)
    npages = guest_bytes // PAGE_SIZE
    if nslots > npages:
        raise ValueError("slots (%d) must not exceed the guest's %d pages" % (nslots, npages))
    if backend not in EMULATED_BACKENDS + ("kvm", "uffd"):
        raise ValueError("unknown backend %r; choose from %s"
                         % (backend, ", ".join(EMULATED_BACKENDS + ("kvm", "uffd"))))
    if strategy not in STRATEGIES:
        raise ValueError("unknown strategy %r; choose from %s" % (strategy, ", ".join(STRATEGIES)))
    if mode not in MODES:
        raise ValueError("unknown mode %r; choose from %s" % (mode, ", ".join(MODES)))
    if strategy == "ring" and backend not in ("ring", "kvm"):
        raise ValueError("strategy 'ring' needs the ring (or kvm) backend, not %r" % backend)
    if strategy == "chunked-clear" and backend == "ring":
        raise ValueError("strategy 'chunked-clear' needs a bitmap backend (GET/CLEAR), "
                         "not %r" % backend)
    if strategy == "chunked-clear" and backend == "uffd":
        raise ValueError("strategy 'chunked-clear' needs KVM_CLEAR_DIRTY_LOG (manual protect), "
                         "which the uffd backend lacks (PAGEMAP_SCAN reports and re-protects "
                         "in one step); use 'global' or 'per-slot'")
    clear_shift = _number(clear_shift, "clear_shift", integer=True)
    if not 6 <= clear_shift <= 31:
        raise ValueError("clear_shift must be in 6..31 (QEMU x-clear-bitmap-shift), got %d"
                         % clear_shift)
    bandwidth = _number(bandwidth, "bandwidth", lo=0, allow_none=True) or 0
    if bandwidth and bandwidth / 10 < lib.KD_WIRE_PAGE_RECORD:
        raise ValueError("bandwidth %r bytes/s is below one page record per 100 ms window "
                         "(%d bytes/s minimum)" % (bandwidth, lib.KD_WIRE_PAGE_RECORD * 10))
    link_bandwidth = _number(link_bandwidth, "link_bandwidth", lo=0, allow_none=True) or 0
    downtime_limit = _number(downtime_limit, "downtime_limit", lo=0, lo_open=True)
    max_wait = _number(max_wait, "max_wait", lo=0)
    max_passes = _number(max_passes, "max_passes", lo=1, integer=True)
    if zero_pages not in ZERO_ACCOUNTING:
        raise ValueError("zero_pages must be 'header' or 'full', got %r" % (zero_pages,))
    populate = _number(populate, "populate", lo=0, hi=1)
    if fill not in ("version", "random"):
        raise ValueError("fill must be 'version' or 'random', got %r" % (fill,))
    step = _number(step, "step", lo=0, lo_open=True)
    vcpus = _number(vcpus, "vcpus", lo=1, hi=256, integer=True)
    batch_bytes = _number(batch_bytes, "batch_bytes", lo=lib.KD_WIRE_BATCH_HEADER
                          + lib.KD_WIRE_PAGE_RECORD, hi=lib.KD_WIRE_MAX_PAYLOAD, integer=True)
    window_log = _number(window_log, "window_log", lo=0, integer=True)
    cm = dict(COST_MODEL)
    if cost_model:
        unknown = set(cost_model) - set(cm)
        if unknown:
            raise ValueError("unknown cost_model keys %s; known: %s"
                             % (sorted(unknown), ", ".join(cm)))
        cm.update(cost_model)
    spec = WorkloadSpec(workload, rate, seed, hot_fraction, hot_share, zipf_s)
    if trace is not None:
        if mode != "virtual":
            raise ValueError("trace replay runs in virtual mode (mode='virtual'), not %r" % mode)
        trace = trace if isinstance(trace, Trace) else load_trace(trace)
        if trace.npages > npages:
            raise ValueError("the trace covers %d pages but the guest has %d"
                             % (trace.npages, npages))
    sink_obj = make_sink(sink)
    if progress is True:
        progress = _progress_printer()

    config = dict(guest_bytes=guest_bytes, slots=nslots, backend=backend, strategy=strategy,
                  mode=mode, vcpus=vcpus, workload=spec.as_dict(),
                  trace=None if trace is None else trace.meta, bandwidth=bandwidth,
                  link_bandwidth=link_bandwidth, downtime_limit=downtime_limit,
                  max_wait=max_wait, max_passes=max_passes, auto_converge=bool(auto_converge),
                  zero_pages=zero_pages, clear_shift=clear_shift, populate=populate, fill=fill,
                  sink=getattr(sink_obj, "name", type(sink_obj).__name__), step=step,
                  cost_model=cm, batch_bytes=batch_bytes, ring_entries=ring_entries,
                  dirty_tracking=dirty_tracking, step_ns=int(step * NS))
    report = MigrationReport(config)

    # ---- the guest ----
    vm_kw = dict(vcpus=vcpus, dirty_tracking=dirty_tracking, guest_memory=True)
    if backend in ("ring", "kvm"):
        vm_kw["ring_entries"] = ring_entries if backend == "ring" else (
            ring_entries if strategy == "ring" else 0)
    vm = VM(backend, **vm_kw)
    sender = None
    threads = None
    try:
        if strategy == "chunked-clear":
            vm.enable_manual_protect()
        per = -(-npages // nslots)
        slot_objs = []
        for i in range(nslots):
            first = i * per
            n = min(per, npages - first)
            if n <= 0:
                break
            vm.set_user_memory_region(i, first * PAGE_SIZE, n * PAGE_SIZE, MEM_LOG_DIRTY_PAGES)
            slot_objs.append(_Slot(vm, i, first, n))
        _populate(vm, slot_objs, npages, populate, fill, seed)

        scfg = ffi.new("struct kd_send_config *")
        scfg.rate_limit = int(bandwidth)
        scfg.max_wait_ns = int(max_wait * NS)
        scfg.flags = (lib.KD_SEND_ZERO_AS_FULL if zero_pages == "full" else 0)
        if mode == "virtual":
            scfg.flags |= lib.KD_SEND_VIRTUAL_CLOCK
            scfg.link_bandwidth = int(link_bandwidth)
            scfg.page_cost_ns = int(cm["page_ns"])
            scfg.clear_call_ns = int(cm["call_ns"] + cm["flush_ns"])
            scfg.reprotect_ns = int(cm["reprotect_ns"])
        sp = ffi.new("kd_sender **")
        check(lib.kd_sender_create(scfg, sp), "kd_sender_create")
        sender = ffi.gc(sp[0], lib.kd_sender_destroy)
        wlog = None
        if window_log:
            wlog = np.zeros(window_log, dtype=np.uint64)
            check(lib.kd_sender_set_window_log(sender, ffi.from_buffer("uint64_t[]", wlog),
                                               window_log), "window_log")

        recorder = Recorder(npages, dict(workload=spec.as_dict(), mode=mode, backend=backend,
                                         strategy=strategy)) if record else None
        ctl = _Controller(config, vm, slot_objs, sender, sink_obj, None, None, progress)
        if mode == "virtual":
            vw = VirtualWorkload(vm, spec, 0, npages, on_ring_full=ctl.reap, recorder=recorder)
            ctl.wl = TraceWorkload(vm, trace, vw.write_gfns) if trace is not None else vw
            ctl._vw = vw
        else:
            threads = ThreadWorkload(vm, spec, 0, npages)
            ctl.threads = threads

        _run(ctl, report, slot_objs, sink_obj, sender, auto_converge, downtime_limit,
             max_passes, bandwidth, recorder, duration_limit)

        if wlog is not None:
            check(lib.kd_sender_close_window(sender), "close_window")
            report.window_log = wlog[:min(_windows(sender), window_log)].copy()
        report.window_budget = bandwidth // 10 if bandwidth else None
        if recorder is not None:
            recorder.save(record)
        report.vm_stats = vm.stats

        # ---- verification ----
        result = sink_obj.finish()
        if result is None or not verify:
            report.verified = None
        else:
            report.destination = dict(result.stats)
            report.verified, report.mismatched_pages = _verify(slot_objs, result)
        return report
    except SinkError as e:
        raise MigrationError(str(e)) from None
    finally:
        if threads is not None:
            try:
                threads.stop()
            except Exception:
                pass
        try:
            sink_obj.close()
        except Exception:
            pass
        vm.close()


def _windows(sender):
    st = ffi.new("struct kd_send_stats *")
    check(lib.kd_sender_stats(sender, st), "stats")
    return st.windows


def _populate(vm, slots, npages, fraction, fill, seed):
    """Write `fraction` of the pages before migration starts (seeded)."""
    if fraction <= 0:
        return
    rng = np.random.default_rng(seed + 7)
    if fill == "random":
        # random bytes in whole pages: a tiled random block, copied by numpy
        block = rng.integers(0, 256, size=(256, PAGE_SIZE), dtype=np.uint8)
        block[:, :8] |= 1  # never a zero page
        for sl in slots:
            mem = sl.memory().reshape(sl.npages, PAGE_SIZE)
            k = int(round(sl.npages * fraction))
            for at in range(0, k, 256):
                m = min(256, k - at)
                mem[at:at + m] = block[:m]
                block = np.roll(block, 1, axis=0)
        return
    k = int(round(npages * fraction))
    gfns = np.sort(rng.choice(npages, size=k, replace=False).astype(np.uint64))
    start = 0
    while start < gfns.size:
        res = vm.write(gfns[start:], 0, POPULATE_VALUE)
        start += res.applied
        if res.ring_full:  # before migration: just make room
            vm.harvest(0)
            vm.reset_dirty_rings()


def _run(ctl, report, slots, sink, sender, auto_converge, downtime_limit, max_passes,
         bandwidth, recorder, duration_limit):
    cfg = ctl.cfg
    strategy = cfg["strategy"]
    virtual = ctl.virtual
    clock = (lambda: ctl.now()) if virtual else time.perf_counter_ns
    t_begin = clock()
    total_pages = sum(sl.npages for sl in slots)

    # start of logging: whatever was dirty before migration is sent by the bulk pass
    for sl in slots:
        ctl.vm.collect(sl.id)
    if ctl.vm.backend == "ring":
        ctl._harvest_all()
    sink.open([sl.base_gfn * PAGE_SIZE for sl in slots], [sl.npages * PAGE_SIZE for sl in slots])
    gpas = np.array([sl.base_gfn * PAGE_SIZE for sl in slots], dtype=np.uint64)
    sizes = np.array([sl.npages * PAGE_SIZE for sl in slots], dtype=np.uint64)
    rc = lib.kd_sender_put_mem_size(sender, _u64_ptr(gpas), _u64_ptr(sizes), len(slots))
    check(rc, "put_mem_size")
    if ctl.threads is not None:
        ctl.threads.start()
    check(lib.kd_sender_iteration_begin(sender), "iteration_begin")
    ctl.deadline = ctl.now() + ctl.step

    throttle = 0
    high_cnt = 0
    pending_est = None
    index = 0

    def set_throttle(pct):
        if ctl.wl is not None:
            ctl.wl.throttle = pct
        if ctl.threads is not None:
            ctl.threads.throttle(pct)

    def run_pass(kind, items, collect_ns, scan_ns, t_start, final=False):
        nonlocal index
        index += 1
        pm = PassMetrics(index, kind)
        pm.collect_ns = collect_ns
        pm.scan_ns = scan_ns
        pm.throttle_pct = throttle
        before = ctl.stats_now()
        per_slot = strategy == "per-slot" and kind == "iterate"
        pm.dirty_found = 0 if per_slot else sum(
            sl.npages if g is None else g.size for sl, g, _, _ in items)
        prog = ctl.progress_cb(index, last_dirty if per_slot else pm.dirty_found)
        for sl, g, sample, bm in items:
            if per_slot:
                g, c = ctl._timed(ctl.vm.collect, sl.id)
                carry_g = None
                if ctl.carry:
                    cg = np.concatenate(ctl.carry)
                    ctl.carry = []
                    inside = (cg >= sl.base_gfn) & (cg < sl.base_gfn + sl.npages)
                    carry_g = cg[inside]
                    if (~inside).any():
                        ctl.carry.append(cg[~inside])
                if carry_g is not None and carry_g.size:
                    g = np.union1d(g, carry_g)
                pm.collect_ns += c
                pm.dirty_found += g.size
                sample = ctl.now() if virtual else lib.kd_clock_ns()
            cb = None
            if prog:
                cb_fn, state = prog
                cb = cb_fn
            pm.send_ns += ctl.send(sl, g, sample, bm, final=final, progress=cb)
            if prog:
                state["base"] += sl.npages if g is None else g.size
        if final:
            if lib.kd_sender_put_eos(sender) == lib.KD_SEND_FULL:
                ctl.flush()
                check(lib.kd_sender_put_eos(sender), "put_eos")
            ctl.flush()
        ctl.finish_pass(pm, before, t_start)
        report.passes.append(pm)
        if ctl.progress and hasattr(ctl.progress, "end_pass"):
            ctl.progress.end_pass(pm)
        return pm

    # ---- bulk pass ----
    t_start = clock()
    sample = ctl.now() if virtual else lib.kd_clock_ns()
    pm = run_pass("bulk", [(sl, None, sample, None) for sl in slots], 0, 0, t_start)
    last_dirty = total_pages

    # ---- iterate ----
    while True:
        bw = pm.bandwidth or (bandwidth or 1)
        t_start = clock()
        if strategy == "per-slot":
            items = [(sl, None, 0, None) for sl in slots]  # collected per slot in run_pass
            pending = last_dirty if pending_est is None else pending_est
            collect_ns = scan_ns = 0
        else:
            items, collect_ns, scan_ns = ctl.sync_all()
            pending = sum(g.size for _, g, _, _ in items)
        expected = pending * PAGE_SIZE * NS / bw if bw else 0
        pm.expected_downtime_ns = int(expected)
        elapsed = clock() - t_begin
        out_of_time = duration_limit is not None and elapsed > duration_limit * NS
        if expected <= downtime_limit * NS or len(report.passes) >= max_passes or out_of_time:
            report.converged = expected <= downtime_limit * NS
            break
        # auto-converge (QEMU: dirtied > 50% of transferred, twice in a row)
        if auto_converge and pm.kind != "bulk":
            if pending * PAGE_SIZE * 2 > pm.bytes:
                high_cnt += 1
            if high_cnt >= 2:
                high_cnt = 0
                throttle = 20 if throttle == 0 else min(throttle + 10, 99)
                report.auto_converge_triggers += 1
                set_throttle(throttle)
        pm = run_pass("iterate", items, collect_ns, scan_ns, t_start)
        if strategy == "per-slot":
            pending_est = pm.dirty_found
            last_dirty = pm.dirty_found

    # ---- stop and copy ----
    t_stop = clock()
    ctl.stopped = True
    if ctl.threads is not None:
        report.workload_writes = ctl.threads.stop()
    if sender is not None:
        check(lib.kd_sender_set_rate_limit(sender, 0), "rate limit off")
    # pages already synced for the pass that did not run are still to send
    pending_items = [] if strategy == "per-slot" else items
    final_items, c2, s2 = ctl.sync_all(final=True)
    merged = []
    for i, sl in enumerate(slots):
        parts = [it[1] for it in pending_items if it[0] is sl] + [final_items[i][1]]
        merged.append((sl, np.unique(np.concatenate(parts)), final_items[i][2], None))
    pm = run_pass("stop-and-copy", merged, c2, s2, t_stop, final=True)
    report.downtime_ns = clock() - t_stop
    report.total_ns = clock() - t_begin
    report.final_throttle_pct = throttle
    if ctl.wl is not None:
        report.workload_writes = ctl.wl.writes
        report.ring_full_events = getattr(ctl._vw, "ring_full", 0)
    else:
        report.ring_full_events = ctl.ring_full_events


def _verify(slots, result):
    """Compare source and destination page hashes; (ok, first mismatched gfns)."""
    want = [(sl.base_gfn * PAGE_SIZE, sl.npages * PAGE_SIZE) for sl in slots]
    got = sorted((int(g), int(s)) for g, s in result.regions)
    if got != sorted(want):
        raise MigrationError("destination layout %s differs from the source %s" % (got, want))
    src = np.concatenate([page_hashes(sl.memory()) for sl in
                          sorted(slots, key=lambda s: s.base_gfn)])
    dst = np.asarray(result.hashes, dtype=np.uint64)
    if dst.size != src.size:
        return False, []
    bad = np.flatnonzero(src != dst)
    bases = np.concatenate([np.arange(sl.npages, dtype=np.uint64) + np.uint64(sl.base_gfn)
                            for sl in sorted(slots, key=lambda s: s.base_gfn)]) \
        if bad.size else None
    return bad.size == 0, ([] if bad.size == 0 else [int(x) for x in bases[bad[:16]]])
