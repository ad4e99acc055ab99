"""The pre-copy loop: the Controller (clocks, modelled costs, carried gfns,
the send loop around the C sender, pass accounting) and ``run_passes`` (bulk
pass, iterate passes until the expected downtime fits, stop-and-copy).

Clocks: in virtual mode the sender's virtual clock is advanced by the cost
model (collect: per call, word, re-protected page, ring entry; send: per page
read and bytes / link_bandwidth) and the workload writes what its rate gives
for each elapsed ``step``; in real-time mode C threads write concurrently and
every cost is measured.
"""
import time

import numpy as np

from ..bindings.constants import (PAGE_SIZE, SEND_DEADLINE, SEND_DONE, SEND_FULL,
                                  SEND_RATE_LIMITED, SEND_TIME_CAP)
from ..bindings.guest_exits import GlobalLock
from ..bindings.sender import clock_ns, latency_percentiles
from ..bindings.wire import page_hashes
from .config import NS, POPULATE_VALUE
from .errors import MigrationError
from .loop_placement import LoopPlacement
from .report import PassMetrics
from .strategies import SyncItem
from .trace import TraceWorkload
from .workloads import ThreadWorkload, VirtualWorkload

#: VM.stats counters and the cost-model field that prices each (virtual clock)
_PRICED = (("get_calls", "ioctl_ns"), ("clear_calls", "ioctl_ns"),
           ("collect_calls", "ioctl_ns"), ("words_scanned", "word_ns"),
           ("summary_words_scanned", "summary_word_ns"),
           ("bytemap_bytes_scanned", "bytemap_byte_ns"),
           ("pages_reprotected", "reprotect_ns"), ("tlb_flushes", "tlb_flush_ns"),
           ("ring_harvested", "ring_harvest_ns"), ("ring_reset", "ring_reset_ns"),
           ("pages_collected", "gfn_ns"))


class Controller:
    """One migration's loop state. The workload is built here (virtual: a
    VirtualWorkload or a trace replay whose ring-full exits call reap();
    real time: C threads), so nothing outside sets its attributes."""

    def __init__(self, cfg, vm, slots, sender, sink, progress=None, recorder=None):
        self.cfg = cfg
        self.costs = cfg.costs
        self.strategy = cfg.sync
        self.vm = vm
        self.slots = slots
        self.sender = sender
        self.sink = sink
        self.progress = progress
        self.virtual = cfg.virtual
        self.step = cfg.step_ns
        self.deadline = 0
        self.wl_time = 0            # the virtual workload has written up to here
        self.carry = []             # gfns reaped early (ring full), for the next sync
        self.ring_full_events = 0   # reaps (real time)
        self.resyncs = 0            # iothread: syncs at iterations inside a pass
        self.bases = np.array([sl.base_gfn for sl in slots], dtype=np.uint64)
        self._last_progress = 0.0
        self.stopped = False
        self.virtual_writer = None  # the VirtualWorkload (virtual mode)
        self.workload = None        # what runs on the virtual clock (or a trace replay)
        self.threads = None         # ThreadWorkload (real time)
        # guest exits on the global lock, and when the loop holds it (loop_placement)
        self.global_lock = GlobalLock(cfg.vcpus, cfg.exit_rate, cfg.exit_service,
                                      virtual=self.virtual) if cfg.exit_rate else None
        self.placement = LoopPlacement(cfg.loop_thread, self.global_lock, self.now,
                                       ring_outside=bool(vm.ring_entries))
        self._ring_vm = bool(vm.ring_entries)
        if self.virtual:
            self.virtual_writer = VirtualWorkload(vm, cfg.spec, 0, cfg.npages,
                                                  on_ring_full=self.reap, recorder=recorder)
            self.workload = (self.virtual_writer if cfg.trace is None else
                             TraceWorkload(vm, cfg.trace, self.virtual_writer.write_gfns))
        else:
            self.threads = ThreadWorkload(vm, cfg.spec, 0, cfg.npages,
                                          global_lock=self.global_lock)

    # -- clock ---------------------------------------------------------------
    def now(self):
        return self.sender.now()

    def clock(self):
        """The clock passes are timed with: virtual, or perf_counter_ns."""
        return self.now() if self.virtual else time.perf_counter_ns()

    def sample_time(self):
        """When dirty information is taken, on the sender's latency clock."""
        return self.now() if self.virtual else clock_ns()

    def charge(self, ns):
        """Virtual: advance the clock by a modelled cost, letting the workload run."""
        if self.virtual and ns > 0:
            self.sender.advance(int(ns))
            self.run_workload()

    def run_workload(self):
        if self.workload is None or self.stopped:
            return
        now = self.now()
        if now > self.wl_time:
            self.workload.advance(self.wl_time, now)
            self.wl_time = now

    def set_throttle(self, pct):
        if self.virtual_writer is not None:  # a trace replays what was recorded: no throttle
            self.virtual_writer.set_throttle(pct)
        if self.threads is not None:
            self.threads.throttle(pct)

    # -- costs ---------------------------------------------------------------
    def _stats_cost(self, before, after):
        c = self.costs
        return sum((after[k] - before[k]) * getattr(c, field) for k, field in _PRICED)

    def timed(self, fn, *args, extra_calls=0):
        """Run a sync call; returns (result, cost ns): modelled (virtual) or measured."""
        with self.placement.sync(ring=self._ring_vm):
            if self.virtual:
                before = self.vm.stats
                out = fn(*args)
                cost = self._stats_cost(before, self.vm.stats) + extra_calls * self.costs.ioctl_ns
                self.charge(cost)
                return out, int(cost)
            t0 = time.perf_counter_ns()
            out = fn(*args)
            return out, time.perf_counter_ns() - t0

    def scan_cost(self, n, t0, per_word=False):
        """Cost of a user-side scan of n gfns (or n log words): modelled, or
        measured since t0."""
        if self.virtual:
            cost = n * (self.costs.word_ns if per_word else self.costs.gfn_ns)
            self.charge(cost)
            return int(cost)
        return time.perf_counter_ns() - t0

    # -- gfns reaped early -----------------------------------------------------
    def reap(self, vcpu=None):
        """A ring filled (or is filling): take its pages now, send them next pass."""
        self.ring_full_events += 1
        gfns = self.strategy.reap(self)
        if gfns.size:
            self.carry.append(gfns)

    def maybe_reap_realtime(self):
        if self.virtual or not self.vm.ring_entries:
            return
        for v in range(self.vm.vcpus):
            used, limit = self.vm.ring_usage(v)
            if used * 2 >= limit:
                self.reap(v)
                return

    def take_carry(self):
        if not self.carry:
            return None
        g = np.concatenate(self.carry)
        self.carry = []
        return g

    def take_carry_per_slot(self):
        carry = self.take_carry()
        return None if carry is None else self.split_by_slot(carry)

    def take_carry_for(self, sl):
        """The carried gfns inside slot sl (the rest stay carried)."""
        cg = self.take_carry()
        if cg is None:
            return None
        inside = (cg >= sl.base_gfn) & (cg < sl.base_gfn + sl.npages)
        if (~inside).any():
            self.carry.append(cg[~inside])
        return cg[inside]

    def split_by_slot(self, gfns):
        """gfns -> sorted unique per-slot arrays."""
        gfns = np.unique(gfns)
        cuts = np.append(np.searchsorted(gfns, self.bases), gfns.size)
        return [gfns[cuts[i]:cuts[i + 1]] for i in range(len(self.slots))]

    # -- send --------------------------------------------------------------
    def flush(self):
        if self.sender.buffer is None:  # counting only (null sink)
            return
        data = self.sender.flush()
        if data is not None:
            self.sink.send(data)

    def put_control(self, put, what):
        self.sender.put_control(put, self.sink.send, what)

    def send(self, sl, gfns, sample, bitmap=None, final=False, progress=None):
        """Send gfns (None: the whole slot) of slot sl. Returns send ns."""
        if bitmap is not None:
            sl.set_clear(self.cfg.clear_shift, bitmap)
        t0 = self.clock()
        n = sl.npages if gfns is None else gfns.size
        s = self.sender
        s.rewind()
        while True:
            deadline = self.deadline if (self.virtual and not final) else 0
            rc = s.send_pages(sl, gfns, n, sample, deadline)
            if rc == SEND_DONE:
                break
            if rc == SEND_FULL:
                self.flush()
            elif rc == SEND_TIME_CAP:
                self.placement.between_iterations()
                s.iteration_begin()  # between iterations: what QEMU's migration thread does
                if not final:
                    self.iothread_resync()
            elif rc == SEND_RATE_LIMITED:
                self.wait_budget_unlocked(final)
            elif rc == SEND_DEADLINE:
                self.deadline = self.now() + self.step
            else:
                raise MigrationError("kd_send_pages returned unknown result %d" % rc)
            if self.virtual and not final:
                self.run_workload()
            elif not final:
                self.maybe_reap_realtime()
            if progress:
                progress(s.position, n)
        if self.virtual and not final:
            self.run_workload()
        if bitmap is not None:
            sl.clear_off()
        return self.clock() - t0

    def wait_budget_unlocked(self, final):
        """Rate limited under the iothread placement: the iteration ends, the
        lock is dropped while the budget refills, the next iteration begins."""
        self.placement.iteration_end()
        while True:
            deadline = self.deadline if (self.virtual and not final) else 0
            if self.sender.wait_budget(deadline) == SEND_DONE:
                break
            self.deadline = self.now() + self.step
            self.run_workload()
        self.placement.iteration_begin()
        self.sender.iteration_begin()
        if not final:
            self.iothread_resync()

    def iothread_resync(self):
        """iothread placement: every iteration begins with a sync of the whole
        dirty log, inside the iteration's hold of the lock. QEMU 0.13 (2010),
        arch_init.c ram_save_live(): each call, stage 2 included, starts with
        cpu_physical_sync_dirty_bitmap(0, TARGET_PHYS_ADDR_MAX) and then sends
        until qemu_file_rate_limit(); it is called through
        qemu_savevm_state_iterate() (savevm.c) from migrate_fd_put_ready()
        (migration.c), a main-loop handler that runs holding qemu_global_mutex.
        The pages found are carried to the next pass's sync (never lost); the
        first iteration of a pass syncs through the strategy itself."""
        if not self.placement.iothread:
            return
        gfns = self.strategy.reap(self)
        self.resyncs += 1
        if gfns.size:
            self.carry.append(gfns)

    def finish_pass(self, pm, before, t_start):
        after = self.sender.stats()
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
        pm.latency_p50_ns, pm.latency_p99_ns = latency_percentiles(
            self.sender.latency_histogram(reset=True), (0.5, 0.99))
        pm.duration_ns = self.clock() - t_start
        pm.bandwidth = pm.bytes * NS / pm.duration_ns if pm.duration_ns else 0.0

    def progress_cb(self, pass_index, total):
        """(callback(done, n), state) reporting a pass's progress, or None."""
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
            mem = vm.slot_memory(sl.slot).reshape(sl.npages, PAGE_SIZE)
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


def run_passes(ctl, report):
    """The loop: bulk pass, iterate passes, stop-and-copy. Fills report."""
    cfg = ctl.cfg
    strategy = ctl.strategy
    slots = ctl.slots
    sender = ctl.sender
    t_begin = ctl.clock()
    total_pages = sum(sl.npages for sl in slots)

    # start of logging: whatever was dirty before migration is sent by the bulk pass
    for sl in slots:
        ctl.vm.collect(sl.slot)
    if ctl.vm.backend == "ring":  # and drop what the rings hold
        for v in range(ctl.vm.vcpus):
            ctl.vm.harvest(v)
        ctl.vm.reset_dirty_rings()
    gpas = np.array([sl.base_gfn * PAGE_SIZE for sl in slots], dtype=np.uint64)
    sizes = np.array([sl.npages * PAGE_SIZE for sl in slots], dtype=np.uint64)
    ctl.sink.open([int(g) for g in gpas], [int(s) for s in sizes])
    ctl.put_control(lambda: sender.put_mem_size(gpas, sizes), "the MEM_SIZE record")
    if ctl.threads is not None:
        ctl.threads.start()
    sender.iteration_begin()
    ctl.deadline = ctl.now() + ctl.step

    state = dict(throttle=0, index=0, last_dirty=total_pages)

    def run_pass(kind, items, collect_ns, scan_ns, t_start, final=False):
        state["index"] += 1
        pm = PassMetrics(state["index"], kind)
        pm.collect_ns = collect_ns
        pm.scan_ns = scan_ns
        pm.throttle_pct = state["throttle"]
        before = sender.stats()
        per_slot = strategy.collects_per_slot and kind == "iterate"
        pm.dirty_found = 0 if per_slot else sum(
            it.slot.npages if it.gfns is None else it.gfns.size for it in items)
        prog = ctl.progress_cb(pm.index, state["last_dirty"] if per_slot else pm.dirty_found)
        for it in items:
            sl, g, sample = it.slot, it.gfns, it.sample_ns
            if per_slot:
                g, c = strategy.collect_slot(ctl, sl)
                pm.collect_ns += c
                pm.dirty_found += g.size
                sample = ctl.sample_time()
            pm.send_ns += ctl.send(sl, g, sample, it.bitmap, final=final,
                                   progress=prog[0] if prog else None)
            if prog:
                prog[1]["base"] += sl.npages if g is None else g.size
        if final:
            ctl.put_control(sender.put_eos, "the end-of-stream record")
            ctl.flush()
        ctl.finish_pass(pm, before, t_start)
        report.passes.append(pm)
        end_pass = getattr(ctl.progress, "end_pass", None)
        if end_pass is not None:
            end_pass(pm)
        return pm

    # ---- bulk pass ----
    t_start = ctl.clock()
    sample = ctl.sample_time()
    ctl.placement.iteration_begin()
    pm = run_pass("bulk", [SyncItem(sl, None, sample, None) for sl in slots], 0, 0, t_start)
    ctl.placement.iteration_end()

    # ---- iterate ----
    high_cnt = 0
    pending_est = None
    while True:
        bw = pm.bandwidth or (cfg.bandwidth or 1)
        t_start = ctl.clock()
        ctl.placement.iteration_begin()
        if strategy.collects_per_slot:
            items = [SyncItem(sl, None, 0, None) for sl in slots]  # collected in run_pass
            pending = state["last_dirty"] if pending_est is None else pending_est
            collect_ns = scan_ns = 0
        else:
            items, collect_ns, scan_ns = strategy.sync(ctl)
            pending = sum(it.gfns.size for it in items)
        expected = pending * PAGE_SIZE * NS / bw if bw else 0
        pm.expected_downtime_ns = int(expected)
        elapsed = ctl.clock() - t_begin
        out_of_time = cfg.duration_limit is not None and elapsed > cfg.duration_limit * NS
        if (expected <= cfg.downtime_limit * NS or len(report.passes) >= cfg.max_passes
                or out_of_time):
            report.converged = expected <= cfg.downtime_limit * NS
            ctl.placement.iteration_end()
            break
        # auto-converge (QEMU: dirtied > 50% of transferred, twice in a row)
        if cfg.auto_converge and pm.kind != "bulk":
            if pending * PAGE_SIZE * 2 > pm.bytes:
                high_cnt += 1
            if high_cnt >= 2:
                high_cnt = 0
                t = state["throttle"]
                state["throttle"] = 20 if t == 0 else min(t + 10, 99)
                report.auto_converge_triggers += 1
                ctl.set_throttle(state["throttle"])
        pm = run_pass("iterate", items, collect_ns, scan_ns, t_start)
        ctl.placement.iteration_end()
        if strategy.collects_per_slot:
            pending_est = pm.dirty_found
            state["last_dirty"] = pm.dirty_found

    # ---- stop and copy ----
    t_stop = ctl.clock()
    report.t_begin_ns, report.t_stop_ns = t_begin, t_stop  # the guest ran in between
    ctl.stopped = True
    if ctl.threads is not None:
        report.workload_writes = ctl.threads.stop()
    sender.set_rate_limit(0)
    # pages already synced for the pass that did not run are still to send
    pending_items = [] if strategy.collects_per_slot else items
    final_items, c2, s2 = strategy.sync(ctl, final=True)
    merged = []
    for i, sl in enumerate(slots):
        parts = [it.gfns for it in pending_items if it.slot is sl] + [final_items[i].gfns]
        merged.append(SyncItem(sl, np.unique(np.concatenate(parts)), final_items[i].sample_ns,
                               None))
    run_pass("stop-and-copy", merged, c2, s2, t_stop, final=True)
    report.downtime_ns = ctl.clock() - t_stop
    report.total_ns = ctl.clock() - t_begin
    report.final_throttle_pct = state["throttle"]
    report.iothread_resyncs = ctl.resyncs
    if ctl.virtual_writer is not None:
        report.workload_writes = ctl.workload.writes
        report.ring_full_events = ctl.virtual_writer.ring_full
    else:
        report.ring_full_events = ctl.ring_full_events


def verify_destination(vm, slots, result):
    """Compare source and destination page hashes; (ok, first mismatched gfns)."""
    want = [(sl.base_gfn * PAGE_SIZE, sl.npages * PAGE_SIZE) for sl in slots]
    got = sorted((int(g), int(s)) for g, s in result.regions)
    if got != sorted(want):
        raise MigrationError("destination layout %s differs from the source %s" % (got, want))
    ordered = sorted(slots, key=lambda s: s.base_gfn)
    src = np.concatenate([page_hashes(vm.slot_memory(sl.slot)) for sl in ordered])
    dst = np.asarray(result.hashes, dtype=np.uint64)
    if dst.size != src.size:
        return False, []
    bad = np.flatnonzero(src != dst)
    if bad.size == 0:
        return True, []
    gfns = np.concatenate([np.arange(sl.npages, dtype=np.uint64) + np.uint64(sl.base_gfn)
                           for sl in ordered])
    return False, [int(x) for x in gfns[bad[:16]]]
