"""The pre-copy loop's controller: per-slot send bookkeeping, sync of the dirty
log, the send loop around the C sender, pass accounting and verification."""
import time

import numpy as np

from .._native import ffi, lib
from ..errors import check
from ..bindings.vm import PAGE_SIZE, _u64_ptr
from .config import NS, POPULATE_VALUE
from .errors import MigrationError
from .report import PassMetrics
from ..bindings.wire import page_hashes

class SlotState:
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


class Controller:
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



def closed_windows(sender):
    st = ffi.new("struct kd_send_stats *")
    check(lib.kd_sender_stats(sender, st), "stats")
    return st.windows


def populate_guest(vm, slots, npages, fraction, fill, seed):
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


def run_passes(ctl, report, slots, sink, sender, auto_converge, downtime_limit, max_passes,
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


def verify_destination(slots, result):
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
