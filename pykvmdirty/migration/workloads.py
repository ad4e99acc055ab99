"""Guest workloads: seeded C generators (csrc/migrate/workload.c), run either on a
virtual clock (the controller asks for the writes of each elapsed interval)
or as real C threads acting as vCPUs.

Kinds: idle, uniform, hotspot (``hot_share`` of the writes to a contiguous
``hot_fraction`` of the pages), zipf (exponent ``zipf_s``), sequential (a
sweep, wrapping) and migration-test (QEMU's guest: every page incremented
sweep after sweep; the value stored is the page's count). Rates are in pages
per second. Trace replay is in :mod:`pykvmdirty.migration.trace`.
"""
import math
import numbers

import numpy as np

from ..bindings.constants import EXIT_DIRTY_RING_FULL
from ..bindings.workload import Generator, WorkloadThreads, check_kind, check_shape
from ..errors import RingFullError
from ..units import NS

_SWEEPS = ("sequential", "migration-test")


def vcpu_seed(seed, vcpu):
    """The generator seed of vCPU `vcpu` of a workload seeded `seed` (the
    firmware guest QEMU migrates is vCPU 0 of its workload)."""
    return int(seed) * 1000003 + int(vcpu)


def hot_threshold(hot_share):
    """hot_share as the 53-bit threshold the page draws compare with."""
    return int(hot_share * 9007199254740992.0)


def check_rate(rate, name="rate"):
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool):
        raise TypeError("%s must be a number of pages per second, got %r" % (name, rate))
    r = float(rate)
    if not math.isfinite(r) or r < 0:
        raise ValueError("%s must be >= 0 pages per second (and finite), got %r"
                         % (name, rate))
    if r > 1e9:
        raise ValueError("%s must be at most 1e9 pages per second, got %r" % (name, rate))
    return int(r)


class WorkloadSpec:
    """What the guest does: kind, rate (pages/s) and the kind's parameters."""

    def __init__(self, kind="hotspot", rate=20000, seed=0, hot_fraction=0.05, hot_share=0.9,
                 zipf_s=1.0):
        check_kind(kind)
        self.kind = kind
        self.rate = check_rate(rate)
        self.seed = int(seed)
        self.hot_fraction, self.hot_share, self.zipf_s = check_shape(hot_fraction, hot_share,
                                                                      zipf_s)

    def as_dict(self):
        return dict(kind=self.kind, rate=self.rate, seed=self.seed,
                    hot_fraction=self.hot_fraction, hot_share=self.hot_share,
                    zipf_s=self.zipf_s)

    def generators(self, first_gfn, npages, nvcpus):
        """One generator per vCPU: sweeps split the range, random kinds get
        their own seed each."""
        gens = []
        for i in range(nvcpus):
            if self.kind in _SWEEPS:
                lo = first_gfn + npages * i // nvcpus
                hi = first_gfn + npages * (i + 1) // nvcpus
                first, n = lo, hi - lo
            else:
                first, n = first_gfn, npages
            kind = self.kind if n > 0 else "idle"
            gens.append(Generator(kind, first, n, seed=vcpu_seed(self.seed, i),
                                  hot_fraction=self.hot_fraction, hot_share=self.hot_share,
                                  zipf_s=self.zipf_s))
        return gens


class VirtualWorkload:
    """Runs a spec on the virtual clock: ``advance(t0, t1)`` performs the
    writes the guest gets done in [t0, t1), split over the vCPUs.

    The guest is paced like the project's firmware guest: work arrives at
    ``rate`` pages/s (withheld by the throttle, as QEMU's CPU throttle makes a
    vCPU sleep), each vCPU catches up at most MAX_LAG_NS of lag and drops the
    rest. What a vCPU gets done is bounded by its time: every write costs it
    ``guest_write_ns`` and every write-side event the write caused (a write
    fault on a protected page, a PML drain, a ring push, a ring-full exit and
    the wait until the rings are reset) costs it what the one cost model
    prices it at. Invariant: per vCPU, busy time <= run time + one chunk's
    overrun, carried as debt into the next interval; so dirty tracking slows
    the guest exactly by the vCPU time its events take.

    on_ring_full(vcpu) is called when a vCPU's ring fills; it must make room
    (harvest + reset), then the rest of the writes go through; its duration on
    ``clock`` (if given) is stall time of that vCPU. recorder, if set,
    receives every written gfn array."""

    CHUNK = 1 << 16
    MAX_LAG_NS = 2_000_000   # the firmware guest's pacer: at most 2 ms of lag made up

    def __init__(self, vm, spec, first_gfn, npages, on_ring_full=None, recorder=None,
                 costs=None, backend=None, clock=None):
        self.vm = vm
        self.spec = spec
        self.gens = spec.generators(first_gfn, npages, vm.vcpus)
        self.on_ring_full = on_ring_full
        self.recorder = recorder
        self.costs = costs
        self.backend = backend
        self.clock = clock
        self._throttle = 0  # percent of the time withheld (auto-converge)
        self._value = 0
        k = len(self.gens)
        self._owed = 0                  # arrived, not yet written (units of advance())
        self._next_vcpu = 0
        self._debt = [0.0] * k          # vCPU ns spent beyond the intervals so far
        # vCPU ns per write seen last (sizes the next chunk; starts at "every write faults")
        first = (costs.guest_write_ns + costs.write_fault_ns) if costs is not None else 0.0
        self._ns_per_write = [first] * k
        self._buf = np.empty(self.CHUNK, dtype=np.uint64)
        self.writes = 0
        self.requested = 0.0            # pages the rate asked for while unthrottled
        self.dropped = 0.0              # pages that arrived and were never written
        self.run_ns = 0.0               # vCPU time available (all vCPUs, throttle applied)
        self.write_ns = 0.0             # vCPU time spent writing (guest_write_ns each)
        self.event_ns = {}              # vCPU time per write-side event (cost model)
        self.stall_ns = 0.0             # vCPU time waiting for a ring reset (ring full)
        self.faults = 0                 # write faults the guest took (first writes)
        self.ring_full = 0

    def set_throttle(self, percent):
        """Withhold `percent` of the vCPUs' time (QEMU's auto-converge CPU throttle)."""
        if not 0 <= percent <= 100:
            raise ValueError("throttle must be in [0, 100] percent, got %r" % (percent,))
        self._throttle = percent

    @property
    def tracking_ns(self):
        """vCPU time the guest lost to dirty tracking (faults, PML, ring pushes,
        ring-full exits and their waits)."""
        return float(sum(self.event_ns.values())) + self.stall_ns

    def _event_ns(self, events):
        """vCPU ns of a guest entry's write-side events (cost model)."""
        if self.costs is None:
            return {}
        b = self.costs.breakdown(events, self.backend)
        return {k: b[k] for k in events if b.get(k)}

    def run_unpriced(self, ns, max_writes):
        """The guest runs `ns` before the migration (no dirty logging yet, so
        its writes cost it only their own time): fills pages with data. At
        most `max_writes` writes (past a few times the range, more change
        nothing the migration sees); a ring that fills is emptied (no
        migration collects it yet)."""
        costs, self.costs = self.costs, None
        on_full, self.on_ring_full = self.on_ring_full, self._drop_rings
        rate = self.spec.rate
        try:
            if rate and rate * ns / NS > max_writes:
                ns = max(1, int(max_writes * NS // rate))
            self.advance(0, int(ns))
        finally:
            self.costs, self.on_ring_full = costs, on_full
            self.requested = self.dropped = self.run_ns = self.write_ns = 0.0
            self.event_ns, self.stall_ns = {}, 0.0
            self.writes = self.ring_full = self.faults = 0
            self._owed = 0
            self._debt = [0.0] * len(self._debt)

    def _drop_rings(self, vcpu):
        self.vm.harvest(vcpu)
        self.vm.reset_dirty_rings()

    def time_report(self):
        """What the guest got done and where its vCPU time went (virtual clock)."""
        run = self.run_ns
        return dict(requested_writes=self.requested, writes=self.writes,
                    dropped_writes=self.dropped,
                    progress=self.writes / self.requested if self.requested else 1.0,
                    vcpu_ns=run, write_ns=self.write_ns,
                    tracking_ns=self.tracking_ns,
                    tracking_share=self.tracking_ns / run if run else 0.0,
                    events_ns=dict(self.event_ns), ring_full_wait_ns=self.stall_ns)

    def advance(self, t0, t1):
        if t1 <= t0 or self.spec.rate == 0 or self.spec.kind == "idle":
            return 0
        k = len(self.gens)
        dt = t1 - t0
        run = dt * (100 - self._throttle) / 100.0       # each vCPU's time in [t0, t1)
        self.run_ns += run * k
        # pages owed in exact integer units of 1 / (NS * 100) page: no rounding drift
        unit = NS * 100
        self._owed += self.spec.rate * dt * (100 - self._throttle)
        self.requested += self.spec.rate * dt / NS
        n = self._owed // unit
        self._value += 1
        total = 0
        for j in range(k):
            v = (self._next_vcpu + j) % k
            share = n // k + (1 if j < n % k else 0)
            budget = run - self._debt[v]
            done, spent = self._run_vcpu(v, share, budget, t1)
            total += done
            self._debt[v] = max(0.0, spent - budget) if budget > 0 else self._debt[v] - run
        self._next_vcpu = (self._next_vcpu + n) % k
        self._owed -= total * unit
        lag = self.spec.rate * self.MAX_LAG_NS * 100      # the pacer gives up on the rest
        if self._owed > lag:
            self.dropped += (self._owed - lag) / unit
            self._owed = lag
        return total

    def _run_vcpu(self, vcpu, owed, budget, t):
        """Write up to `owed` pages as vCPU vcpu within `budget` ns of its
        time: (pages written, ns spent)."""
        per_write = self.costs.guest_write_ns if self.costs is not None else 0.0
        gen = self.gens[vcpu]
        done = spent = 0
        want = int(owed)
        while done < want and budget - spent > 0:
            # as many writes as the time left pays for if none of them faulted
            room = want - done
            est = self._ns_per_write[vcpu]
            if est > 0:
                room = min(room, max(1, int((budget - spent) / est)))
            # one C call generates and writes; it reports its own events
            gfns, res, value, events = gen.enter(self.vm, vcpu, min(room, self.CHUNK),
                                                 self._value, self._buf)
            if gfns.size == 0:
                break
            stall = self.finish_entry(vcpu, gfns, res, value, t, events)
            cost = gfns.size * per_write + stall
            self.write_ns += gfns.size * per_write
            if self.costs is not None:
                self.faults += events["write_faults"]
                for name, ns in self._event_ns(events).items():
                    self.event_ns[name] = self.event_ns.get(name, 0.0) + ns
                    cost += ns
            done += gfns.size
            spent += cost
            if self.costs is not None:
                self._ns_per_write[vcpu] = cost / gfns.size
        return done, spent

    def write_gfns(self, vcpu, gfns, value, t, events=None):
        """Write gfns as vCPU vcpu; on a ring-full exit call on_ring_full and go
        on. Returns the ns the vCPU waited for room (on `clock`); events: a
        dict the writes' events are added to."""
        return self.finish_entry(vcpu, gfns, None, value, t, events)

    def finish_entry(self, vcpu, gfns, res, value, t, events=None):
        """After a guest entry that wrote res.applied of gfns (res None:
        nothing yet), write the rest as write_gfns does."""
        start = 0
        stall = 0
        while res is not None or start < gfns.size:
            if res is None:
                res = self.vm.write(gfns[start:], vcpu, value, events)
            applied, reason, res = res.applied, res.exit_reason, None
            start += applied
            if reason == EXIT_DIRTY_RING_FULL:
                self.ring_full += 1
                if self.on_ring_full is None:
                    raise RingFullError(vcpu, start)
                c0 = self.clock() if self.clock is not None else 0
                self.on_ring_full(vcpu)
                if self.clock is not None:
                    stall += self.clock() - c0
            elif applied == 0 and start < gfns.size:
                raise RuntimeError("write of %d gfns on vCPU %d made no progress"
                                   % (gfns.size - start, vcpu))
        self.stall_ns += stall
        self.writes += gfns.size
        if self.recorder is not None:
            self.recorder.add(t, gfns, vcpu)
        return stall


class ThreadWorkload:
    """Runs a spec as C threads (one per vCPU) at the spec's rate in real time."""

    def __init__(self, vm, spec, first_gfn, npages, value_base=1 << 32, global_lock=None):
        self.vm = vm
        self.spec = spec
        self.gens = spec.generators(first_gfn, npages, vm.vcpus)
        self._threads = None
        self._value_base = value_base
        self.global_lock = global_lock  # its exits run on these threads (guest_exits)

    @property
    def stats(self):
        """Per-thread stats (writes, ring_full_waits, error) once stopped."""
        return None if self._threads is None else self._threads.stats

    def start(self):
        if self.spec.kind == "idle" and self.global_lock is None:
            return self
        # an idle guest still runs (and exits): a rate makes its threads tick, not spin
        rate = self.spec.rate if self.spec.kind != "idle" else len(self.gens) * 1000
        self._threads = WorkloadThreads(self.vm, self.gens, rate, self._value_base,
                                        self.global_lock)
        return self

    def throttle(self, percent):
        if self._threads is not None:
            self._threads.throttle(percent)

    def stop(self):
        """Stop and join; returns total writes (and keeps per-thread stats)."""
        if self._threads is None:
            return 0
        if self._threads.running:
            self._threads.stop()
        return sum(s["writes"] for s in self._threads.stats)
