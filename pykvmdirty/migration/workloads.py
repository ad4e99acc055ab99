"""Guest workloads: seeded C generators (csrc/workload.c), run either on a
virtual clock (the controller asks for the writes of each elapsed interval)
or as real C threads acting as vCPUs.

Kinds: idle, uniform, hotspot (``hot_share`` of the writes to a contiguous
``hot_fraction`` of the pages), zipf (exponent ``zipf_s``), sequential (a
sweep, wrapping) and migration-test (QEMU's guest: every page incremented
sweep after sweep; the value stored is the page's count). Rates are in pages
per second. Trace replay is in :mod:`pykvmdirty.migration.trace`.
"""
import numbers

import numpy as np

from ..bindings.constants import EXIT_DIRTY_RING_FULL
from ..bindings.workload import Generator, WorkloadThreads, check_kind, check_shape
from ..errors import RingFullError

_SWEEPS = ("sequential", "migration-test")
NS = 1_000_000_000


def check_rate(rate, name="rate"):
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool):
        raise TypeError("%s must be a number of pages per second, got %r" % (name, rate))
    r = float(rate)
    if r < 0:
        raise ValueError("%s must be >= 0 pages per second, got %r" % (name, rate))
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
            gens.append(Generator(kind, first, n, seed=self.seed * 1000003 + i,
                                  hot_fraction=self.hot_fraction, hot_share=self.hot_share,
                                  zipf_s=self.zipf_s))
        return gens


class VirtualWorkload:
    """Runs a spec on the virtual clock: ``advance(t0, t1)`` performs the
    writes the rate gives for [t0, t1) (at t1), split over the vCPUs.

    on_ring_full(vcpu) is called when a vCPU's ring fills; it must make room
    (harvest + reset), then the rest of the writes go through. recorder, if
    set, receives every written gfn array."""

    CHUNK = 1 << 16

    def __init__(self, vm, spec, first_gfn, npages, on_ring_full=None, recorder=None):
        self.vm = vm
        self.spec = spec
        self.gens = spec.generators(first_gfn, npages, vm.vcpus)
        self.on_ring_full = on_ring_full
        self.recorder = recorder
        self._throttle = 0  # percent of the rate withheld (auto-converge)
        self._owed = 0
        self._value = 0
        self._next_vcpu = 0
        self._buf = np.empty(self.CHUNK, dtype=np.uint64)
        self.writes = 0
        self.ring_full = 0

    def set_throttle(self, percent):
        """Withhold `percent` of the rate (QEMU's auto-converge CPU throttle)."""
        if not 0 <= percent <= 100:
            raise ValueError("throttle must be in [0, 100] percent, got %r" % (percent,))
        self._throttle = percent

    def advance(self, t0, t1):
        if t1 <= t0 or self.spec.rate == 0 or self.spec.kind == "idle":
            return 0
        self._owed += self.spec.rate * (t1 - t0) * (100 - self._throttle)
        unit = NS * 100
        n = self._owed // unit
        self._owed -= n * unit
        if not n:
            return 0
        self._value += 1
        k = len(self.gens)
        total = 0
        for j in range(k):
            v = (self._next_vcpu + j) % k
            share = n // k + (1 if j < n % k else 0)
            total += self._write(v, share, t1)
        self._next_vcpu = (self._next_vcpu + n) % k
        return total

    def _write(self, vcpu, count, t):
        gen = self.gens[vcpu]
        done = 0
        while done < count:
            gfns, hint = gen.generate(min(count - done, self.CHUNK), self._buf)
            if gfns.size == 0:
                break
            value = hint or self._value
            self.write_gfns(vcpu, gfns, value, t)
            done += gfns.size
        return done

    def write_gfns(self, vcpu, gfns, value, t):
        """Write gfns as vCPU vcpu; on a ring-full exit call on_ring_full and go on."""
        start = 0
        while start < gfns.size:
            res = self.vm.write(gfns[start:], vcpu, value)
            start += res.applied
            if res.exit_reason == EXIT_DIRTY_RING_FULL:
                self.ring_full += 1
                if self.on_ring_full is None:
                    raise RingFullError(vcpu, start)
                self.on_ring_full(vcpu)
            elif res.applied == 0:
                raise RuntimeError("write of %d gfns on vCPU %d made no progress"
                                   % (gfns.size - start, vcpu))
        self.writes += gfns.size
        if self.recorder is not None:
            self.recorder.add(t, gfns, vcpu)


class ThreadWorkload:
    """Runs a spec as C threads (one per vCPU) at the spec's rate in real time."""

    def __init__(self, vm, spec, first_gfn, npages, value_base=1 << 32):
        self.vm = vm
        self.spec = spec
        self.gens = spec.generators(first_gfn, npages, vm.vcpus)
        self._threads = None
        self._value_base = value_base

    @property
    def stats(self):
        """Per-thread stats (writes, ring_full_waits, error) once stopped."""
        return None if self._threads is None else self._threads.stats

    def start(self):
        if self.spec.kind == "idle":
            return self
        self._threads = WorkloadThreads(self.vm, self.gens, self.spec.rate, self._value_base)
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
