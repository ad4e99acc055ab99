"""The pre-copy loop, the one every migration runs: the Controller (clocks,
modelled costs, carried gfns, the migration bitmap, the send loop around the
C sender, pass accounting) and ``run_loop`` (setup, iterations until the
policy completes, stop-and-copy).

What decides when to sync, when to switch over and when to throttle is the
run's policy (policy.py: ``qemu-7.2`` or ``passes``); how a sync learns the
dirty pages is the sync strategy (strategies.py); where the loop holds the
global lock is the placement (loop_placement.py). The loop itself never asks
which policy, strategy or backend it runs.

Clocks: in virtual mode the sender's virtual clock is advanced by the cost
model (collect: per call, word, re-protected page, ring entry; send: per page
read and bytes / link_bandwidth) and the workload writes what its vCPUs' time
gives for each elapsed ``step`` (workloads.VirtualWorkload); in real-time
mode C threads write concurrently and every cost is measured.

A report "pass" is the stretch from one sync to the next (the first, the
bulk, from setup to the second sync): what that sync found, what was sent
until the next.
"""
import dataclasses
import time
from typing import Any

import numpy as np

from ..bindings.constants import (PAGE_SIZE, SEND_DEADLINE, SEND_DONE, SEND_FULL,
                                  SEND_RATE_LIMITED, SEND_TIME_CAP, WIRE_PAGE_RECORD,
                                  WIRE_ZERO_RECORD)
from ..bindings.guest_exits import GlobalLock
from ..bindings.sender import clock_ns, latency_percentiles
from ..bindings.wire import page_hashes, versions_diff
from .config import NS, POPULATE_VALUE
from .errors import MigrationError
from .loop_placement import LoopPlacement
from .pending import PageRun, Pending
from .policy import policy_class
from .report import PassMetrics
from .trace import TraceWorkload
from .workloads import ThreadWorkload, VirtualWorkload

#: at most this share of the sender's time goes to the guest's faults
MAX_CONTENTION = 0.9

class Controller:
    """One migration's loop state. The workload is built here (virtual: a
    VirtualWorkload or a trace replay whose ring-full exits call reap();
    real time: C threads), so nothing outside sets its attributes."""

    def __init__(self, cfg, vm, slots, sender, sink, progress=None, recorder=None):
        self.cfg = cfg
        self.costs = cfg.costs
        self.strategy = cfg.sync
        self.policy = policy_class(cfg.policy)(cfg)
        self.vm = vm
        self.slots = slots
        self.sender = sender
        self.sink = sink
        self.progress = progress
        self.virtual = cfg.virtual
        self.step = cfg.step_ns
        self.deadline = 0
        self.wl_time = 0            # the virtual workload has written up to here
        self._in_workload = False   # run_workload is running (a ring-full reap re-enters)
        self.contention = 0.0       # share of the host the guest's faults take from the sender
        self.idle_ns = 0            # virtual: time the sender waited for its rate limit
        # pages reaped early (a ring filled, an iothread resync) for the next
        # sync: a bitmap per slot, as QEMU's dirty memory bitmap the ring
        # reaper sets (bounded by the guest's size, however often it reaps)
        self.carry = Pending(slots)
        self.ring_full_events = 0   # reaps (real time)
        self.resyncs = 0            # iothread: syncs at iterations inside a pass
        self.bases = np.array([sl.base_gfn for sl in slots], dtype=np.uint64)
        self._last_progress = 0.0
        self.stopped = False
        self.pending = Pending(slots)
        self.syncs = 0              # dirty-log syncs (QEMU's dirty-sync-count)
        self.converged = False
        self.passes = []            # closed PassMetrics
        self.pm: Any = None         # the open one (a PassMetrics)
        self._pm_stats: dict = {}
        self._pm_guest = (0, 0.0)    # the guest's writes and tracking time at the pass start
        self._pm_start = 0
        self.t_begin = 0
        self.virtual_writer = None  # the VirtualWorkload (virtual mode)
        self.workload = None        # what runs on the virtual clock (or a trace replay)
        self.threads = None         # ThreadWorkload (real time)
        # guest exits on the global lock, and when the loop holds it (loop_placement)
        self.global_lock = GlobalLock(cfg.vcpus, cfg.exit_rate, cfg.exit_service,
                                      virtual=self.virtual) if cfg.exit_rate else None
        self.placement = LoopPlacement(cfg.loop_thread, self.global_lock, self.now,
                                       ring_outside=bool(vm.ring_entries))
        self._ring_vm = bool(vm.ring_entries)
        first, count = cfg.workload_pages
        if self.virtual:
            self.virtual_writer = VirtualWorkload(vm, cfg.spec, first, count,
                                                  on_ring_full=self.reap, recorder=recorder,
                                                  costs=cfg.costs, backend=cfg.backend,
                                                  clock=self.now)
            self.workload = (self.virtual_writer if cfg.trace is None else
                             TraceWorkload(vm, cfg.trace, self.virtual_writer.write_gfns,
                                           idle_ns=lambda: self.idle_ns))
        else:
            self.threads = ThreadWorkload(vm, cfg.spec, first, count,
                                          global_lock=self.global_lock)

    # -- clock ---------------------------------------------------------------
    def now(self):
        return self.sender.now()

    def clock(self):
        """The clock passes are timed with: virtual, or perf_counter_ns."""
        return self.now() if self.virtual else time.perf_counter_ns()

    def elapsed_ns(self):
        return self.clock() - self.t_begin

    def sample_time(self):
        """When dirty information is taken, on the sender's latency clock."""
        return self.now() if self.virtual else clock_ns()

    def charge(self, ns):
        """Virtual: advance the clock by a modelled cost, letting the workload run."""
        if self.virtual and ns > 0:
            self.sender.advance(int(ns))
            self.run_workload()

    def run_workload(self):
        """Virtual: the guest writes what it gets done up to now. A ring-full
        exit inside it reaps (the reap's cost moves the clock) and re-enters
        here: the inner call returns at once and the outer one runs the
        interval the reap took afterwards, so no interval is written twice."""
        if self.workload is None or self.stopped or self._in_workload:
            return
        self._in_workload = True
        try:
            while True:
                now = self.now()
                if now <= self.wl_time:
                    break
                t0, self.wl_time = self.wl_time, now
                faults = self.virtual_writer.faults if self.virtual_writer is not None else 0
                self.workload.advance(t0, now)
                if self.virtual_writer is not None:
                    self._contend(now - t0, self.virtual_writer.faults - faults)
        finally:
            self._in_workload = False

    def _contend(self, dt, faults):
        """The guest's write faults take host time from the sender (same cores,
        same locks): for the next interval its pages cost 1 / (1 - share) as much,
        share = faults x fault_contention_ns / dt of the last interval (at most
        MAX_CONTENTION)."""
        x = self.costs.fault_contention_ns
        if not x or dt <= 0:
            return
        share = min(MAX_CONTENTION, faults * x / dt)
        if abs(share - self.contention) < 0.01:
            return
        self.contention = share
        self.sender.set_costs(int(self.costs.page_ns / (1 - share)),
                              int(self.cfg.link_bandwidth * (1 - share)))

    def set_throttle(self, pct):
        if self.virtual_writer is not None:  # a trace replays what was recorded: no throttle
            self.virtual_writer.set_throttle(pct)
        if self.threads is not None:
            self.threads.throttle(pct)

    # -- costs ---------------------------------------------------------------
    def _stats_cost(self, before, after):
        """The cost model's price of a sync's counted events (collection side)."""
        delta = {k: after[k] - before.get(k, 0) for k in after}
        return self.costs.collect_side_ns(delta, self.cfg.backend, include_user=True)

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
        self.carry.add_gfns(self.strategy.reap(self), self.bases)

    def maybe_reap_realtime(self):
        if self.virtual or not self.vm.ring_entries:
            return
        for v in range(self.vm.vcpus):
            used, limit = self.vm.ring_usage(v)
            if used * 2 >= limit:
                self.reap(v)
                return

    def take_carry(self):
        """Every page carried (sorted, unique), cleared; None if none."""
        return self.carry.take_every()

    def take_carry_per_slot(self):
        carry = self.take_carry()
        return None if carry is None else self.split_by_slot(carry)

    def take_carry_for(self, sl):
        """The carried gfns inside slot sl (the rest stay carried)."""
        i = self.slots.index(sl)
        return self.carry.take_all(i) if self.carry.count else None

    def split_by_slot(self, gfns):
        """gfns -> sorted unique per-slot arrays."""
        gfns = np.unique(gfns)
        cuts = np.append(np.searchsorted(gfns, self.bases), gfns.size)
        return [gfns[cuts[i]:cuts[i + 1]] for i in range(len(self.slots))]

    # -- the migration bitmap ----------------------------------------------
    @property
    def collects_per_slot(self):
        return self.strategy.collects_per_slot

    def npasses(self):
        return len(self.passes) + (self.pm is not None)

    @property
    def last_pass(self):
        return self.passes[-1] if self.passes else self.pm

    def bytes_sent(self):
        """Record bytes sent so far (what QEMU's ram transferred counts)."""
        return self.sender.stats()["wire_bytes"]

    def open_pass(self, kind, t_start=None):
        self.close_pass()
        pm = PassMetrics(len(self.passes) + 1, kind)
        pm.throttle_pct = self.policy.throttle
        self.pm = pm
        self._pm_stats = self.sender.stats()
        self._pm_start = self.clock() if t_start is None else t_start
        return pm

    def close_pass(self):
        pm = self.pm
        if pm is None:
            return
        self.pm = None
        after = self.sender.stats()
        before = self._pm_stats
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
        pm.duration_ns = self.clock() - self._pm_start
        pm.bandwidth = pm.bytes * NS / pm.duration_ns if pm.duration_ns else 0.0
        if self.virtual_writer is not None:
            vw = self.virtual_writer
            pm.guest_writes = vw.writes - self._pm_guest[0]
            pm.guest_tracking_ns = vw.tracking_ns - self._pm_guest[1]
            self._pm_guest = (vw.writes, vw.tracking_ns)
        self.passes.append(pm)
        end_pass = getattr(self.progress, "end_pass", None)
        if end_pass is not None:
            end_pass(pm)

    def sync(self, final=False):
        """Sync the dirty log into the migration bitmap (the strategy decides
        how); opens the next report pass. Returns the pages newly set."""
        self.syncs += 1
        if self.syncs == 2 and self.costs.write_fault_again_ns and self.virtual_writer:
            # from now on faults hit pages the migration protected again
            self.virtual_writer.costs = dataclasses.replace(
                self.costs, write_fault_ns=self.costs.write_fault_again_ns)
        sent = self.pm is None or self.sender.stats()["pages"] > self._pm_stats["pages"]
        if not final and sent:   # (a sync before any page went out stays in its pass)
            self.open_pass("iterate")
        pm = self.pm
        reprotected = self.vm.stats.get("pages_reprotected", 0)
        try:
            return self._sync(pm, final)
        finally:
            pm.pages_reprotected += self.vm.stats.get("pages_reprotected", 0) - reprotected

    def _sync(self, pm, final):
        for sl in self.slots:      # chunks not cleared since the last sync stay dirty in the log
            sl.clear_off()
        self.charge(self.costs.sync_ns)
        if self.collects_per_slot and not final:
            # per-slot polling: each slot is collected when the scan reaches it
            for i in range(len(self.slots)):
                self.pending.stale[i] = True
            return 0
        items, collect_ns, scan_ns = self.strategy.sync(self, final=final)
        pm.collect_ns += collect_ns
        pm.scan_ns += scan_ns
        new = 0
        for i, it in enumerate(items):
            if it.bitmap is not None:
                it.slot.set_clear(self.cfg.clear_shift, it.bitmap)
                t0 = time.perf_counter_ns()
                fresh, found = self.pending.or_bitmap(i, it.bitmap, it.sample_ns)
                if not self.virtual:
                    pm.scan_ns += time.perf_counter_ns() - t0
                new += fresh
                if it.gfns is not None:   # carried pages the bitmap did not hold
                    extra = self.pending.add(i, it.gfns, it.sample_ns)
                    new += extra
                    found += int(it.gfns.size) - _in_bitmap(it.bitmap, it.gfns - np.uint64(
                        it.slot.base_gfn))
                pm.dirty_found += found
                continue
            new += self.pending.add(i, it.gfns, it.sample_ns)
            pm.dirty_found += 0 if it.gfns is None else int(it.gfns.size)
        return new

    def _collect_stale(self, i):
        """Per-slot polling: collect slot i as the scan enters it."""
        sl = self.slots[i]
        g, c = self.strategy.collect_slot(self, sl)
        self.pm.collect_ns += c
        self.pm.dirty_found += int(g.size)
        self.pending.add(i, g, self.sample_time())

    # -- send --------------------------------------------------------------
    def flush(self):
        if self.sender.buffer is None:  # counting only (null sink)
            return
        data = self.sender.flush()
        if data is not None:
            self.sink.send(data)

    def put_control(self, put, what):
        self.sender.put_control(put, self.sink.send, what)

    def iterate(self, whole_pass, final=False):
        """Send from the migration bitmap's cursor: everything pending
        (whole_pass), or until the rate limit or the time cap ends the
        iteration. Returns why it ended: "done", "rate-limited", "time-cap"."""
        s = self.sender
        pm = self.pm
        while True:
            batch = self.pending.next_batch(self._collect_stale)
            if batch is None:
                return "done"
            i, gfns = batch
            sl = self.slots[i]
            t0 = self.clock()
            stop = None
            # a run of pending pages goes as a range: no gfn list to read
            run = isinstance(gfns, PageRun)
            s.rewind(gfns.first if run else 0)
            todo, end = (None, gfns.stop) if run else (gfns, gfns.size)
            while True:
                deadline = self.deadline if (self.virtual and not final) else 0
                rc = s.send_pages(sl, todo, end, self.pending.sample_ns[i], deadline)
                if rc == SEND_DONE:
                    break
                if rc == SEND_FULL:
                    self.flush()
                elif rc == SEND_DEADLINE:
                    self.deadline = self.now() + self.step
                elif rc == SEND_TIME_CAP:
                    if not whole_pass:
                        stop = "time-cap"
                        break
                    self.placement.between_iterations()
                    s.iteration_begin()  # between iterations: what QEMU's migration thread does
                    if not final:
                        self.iothread_resync()
                elif rc == SEND_RATE_LIMITED:
                    if not whole_pass:
                        stop = "rate-limited"
                        break
                    self.wait_budget_unlocked(final)
                else:
                    raise MigrationError("kd_send_pages returned unknown result %d" % rc)
                if self.virtual and not final:
                    self.run_workload()
                elif not final:
                    self.maybe_reap_realtime()
                self.report_progress(pm)
            self.pending.consume(i, gfns, s.position - (gfns.first if run else 0))
            pm.send_ns += self.clock() - t0
            if self.virtual and not final:
                self.run_workload()
            self.report_progress(pm)
            if stop:
                return stop

    def report_progress(self, pm):
        if not self.progress:
            return
        now = time.monotonic()
        if now - self._last_progress < 0.1:
            return
        self._last_progress = now
        done = self.sender.stats()["pages"] - self._pm_stats["pages"]
        self.progress(pm.index, done, max(done + self.pending.count, 1))

    def wait_window(self, final=False):
        """Rate limited: sleep until the window's budget refills (QEMU's
        migration_rate_limit), the guest running meanwhile (unless stopped)."""
        while True:
            deadline = self.deadline if (self.virtual and not final) else 0
            t0 = self.now()
            rc = self.sender.wait_budget(deadline)
            self.idle_ns += self.now() - t0
            if rc == SEND_DONE:
                break
            self.deadline = self.now() + self.step
            self.run_workload()
        self.sender.iteration_begin()

    def wait_budget_unlocked(self, final):
        """Rate limited under the iothread placement: the iteration ends, the
        lock is dropped while the budget refills, the next iteration begins."""
        self.placement.iteration_end()
        self.wait_window(final)
        self.placement.iteration_begin()
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
        self.carry.add_gfns(self.strategy.reap(self), self.bases)
        self.resyncs += 1

    def stopped_prices(self):
        """Virtual clock: the sender's prices once the VM stops, from the cost
        model's stopped_page_ns (a normal page's whole send cost; zero pages
        keep their price). None: unchanged."""
        c = self.costs
        if not self.virtual:
            return None
        if not c.stopped_page_ns:   # no guest faults compete any more
            return (int(c.page_ns), int(self.cfg.link_bandwidth)) if self.contention else None
        link = self.cfg.link_bandwidth
        zero = c.page_ns + (WIRE_ZERO_RECORD * NS / link if link else 0.0)
        extra = c.stopped_page_ns - zero
        if extra <= 0:
            return int(c.stopped_page_ns), 0
        link2 = (WIRE_PAGE_RECORD - WIRE_ZERO_RECORD) * NS / extra
        return max(0, int(round(zero - WIRE_ZERO_RECORD * NS / link2))), int(round(link2))


def _in_bitmap(bitmap, rel):
    """How many of the slot-relative pages rel are set in bitmap."""
    bits = bitmap[(rel >> np.uint64(6)).astype(np.intp)] >> (rel & np.uint64(63))
    return int((bits & np.uint64(1)).sum())


def populate_guest(vm, slots, npages, fraction, fill, seed):
    """Write `fraction` of the pages before migration starts (seeded)."""
    if fraction <= 0:
        return
    rng = np.random.default_rng(seed + 7)
    if fill == "random" and vm.page_model == "versions":
        # the content-free twin of random bytes: a random nonzero first word
        # (the version) in the same first pages of each slot
        for sl in slots:
            mem = vm.slot_memory(sl.slot)
            k = int(round(sl.npages * fraction))
            for at in range(0, k, 1 << 20):
                m = min(1 << 20, k - at)
                mem[at:at + m] = rng.integers(0, 1 << 63, size=m, dtype=np.uint64) | 1
        return
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


def run_loop(ctl, report):
    """The loop: setup, iterations until the policy completes, stop-and-copy.
    Fills report."""
    cfg = ctl.cfg
    policy = ctl.policy
    slots = ctl.slots
    sender = ctl.sender

    # the guest runs before the migration starts (its pages fill with data)
    if cfg.warmup and ctl.virtual_writer is not None:
        ctl.virtual_writer.run_unpriced(cfg.warmup * NS, 8 * cfg.workload_pages[1])
    ctl.t_begin = t_begin = ctl.clock()
    # start of logging: whatever was dirty before migration is in the bitmap anyway
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
    ctl.open_pass("bulk", t_begin)
    ctl.charge(cfg.costs.setup_ns)
    report.setup_ns = ctl.clock() - t_begin
    ctl.pending.fill(ctl.sample_time())
    sender.iteration_begin()
    ctl.deadline = ctl.now() + ctl.step
    ctl.placement.iteration_begin()
    policy.start(ctl)

    while True:
        if policy.should_complete(ctl):
            break
        why = ctl.iterate(policy.whole_pass)
        ctl.placement.iteration_end()      # (a rate-limit wait holds no lock)
        policy.after_iteration(ctl, why)
        ctl.placement.iteration_begin()
        sender.iteration_begin()
        ctl.iothread_resync()
    ctl.placement.iteration_end()

    # ---- stop and copy ----
    t_stop = ctl.clock()
    report.t_begin_ns, report.t_stop_ns = t_begin, t_stop  # the guest ran in between
    ctl.stopped = True
    if ctl.threads is not None:
        report.workload_writes = ctl.threads.stop()
    sender.set_rate_limit(0)
    prices = ctl.stopped_prices()
    if prices is not None:
        sender.set_costs(*prices)
    ctl.open_pass("stop-and-copy", t_stop)
    ctl.sync(final=True)
    ctl.pm.dirty_found = ctl.pending.count
    ctl.iterate(whole_pass=True, final=True)
    ctl.put_control(sender.put_eos, "the end-of-stream record")
    ctl.flush()
    if ctl.virtual:  # stopping the VM, device state (priced; measured in real time)
        ctl.sender.advance(int(cfg.costs.downtime_overhead_ns))
    ctl.close_pass()
    report.passes.extend(ctl.passes)
    report.downtime_ns = ctl.clock() - t_stop
    report.total_ns = ctl.clock() - t_begin
    report.converged = ctl.converged
    report.status = policy.status
    report.policy = policy.name
    report.dirty_sync_count = ctl.syncs
    report.auto_converge_triggers = policy.triggers
    report.final_throttle_pct = policy.throttle
    report.expected_downtime_ns = getattr(policy, "expected_downtime_ns", 0)
    report.dirty_pages_rate = getattr(policy, "dirty_pages_rate", 0.0)
    report.iothread_resyncs = ctl.resyncs
    if ctl.virtual_writer is not None:
        report.workload_writes = ctl.workload.writes
        report.ring_full_events = ctl.virtual_writer.ring_full
        report.guest = ctl.virtual_writer.time_report()
    else:
        report.ring_full_events = ctl.ring_full_events


def verify_destination(vm, slots, result):
    """Compare source and destination page hashes (content-free: versions);
    (ok, first mismatched gfns)."""
    want = [(sl.base_gfn * PAGE_SIZE, sl.npages * PAGE_SIZE) for sl in slots]
    got = sorted((int(g), int(s)) for g, s in result.regions)
    if got != sorted(want):
        raise MigrationError("destination layout %s differs from the source %s" % (got, want))
    ordered = sorted(slots, key=lambda s: s.base_gfn)
    if result.versions is not None:
        if vm.page_model != "versions":
            raise MigrationError("the destination holds page versions, the source contents")
        by_gpa = {int(g): arr for (g, _), arr in zip(result.regions, result.versions)}
        bad_gfns: list = []
        for sl in ordered:
            n, first = versions_diff(vm.slot_memory(sl.slot), by_gpa[sl.base_gfn * PAGE_SIZE])
            bad_gfns += [sl.base_gfn + i for i in first][:16 - len(bad_gfns)]
            if n and len(bad_gfns) >= 16:
                break
        return not bad_gfns, bad_gfns
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
