"""Dirty-rate estimates on the emulator, by the three methods of QEMU 7.2's
``calc-dirty-rate`` (migration/dirtyrate.c), each on the emulator's own
interfaces:

- **page sampling** (:class:`PageSampling`): per memory slot (QEMU: per
  RAMBlock of at least 128 KiB), ``bytes * sample_pages >> 30`` pages drawn
  uniformly at random, with replacement, from the slot's pages but its last
  (QEMU's ``g_rand_int_range(0, pages - 1)``); each page hashed (QEMU 7.2:
  zlib's CRC-32 of the page; here CRC32C, ``kd_sample_page_crc32c``), hashed
  again after the period; estimate = changed samples / samples x the slots'
  pages, pooled over the slots as QEMU pools them. It sees content changes
  only: a page rewritten with the bytes it held is clean to it.
- **dirty bitmap** (:class:`DirtyBitmap`): a collect (sync + clear) at the
  start, one at the end; estimate = pages in the log. Exact: the pages
  written in the period, each once.
- **dirty ring** (:class:`DirtyRing`): every vCPU's ring entries harvested
  during the period (at its end, when a ring fills and, as QEMU's reaper
  thread does, every ``reap_interval`` s), each harvest followed by a ring
  reset; estimate = entries. A page written again after a reset is pushed
  again, so over a period longer than the reap interval the ring counts a
  rate of dirtying, more than the period's distinct pages.

Each ``finish(calc_time)`` returns an :class:`Estimate`: pages, pages/s, MiB/s
and what QEMU's integer arithmetic would print (MB/s, MB = MiB).

:func:`measure` runs a known workload (the emulator's seeded generators, on
the virtual clock: ``rate`` writes per second) through windows of given
lengths and gives each method's estimate next to the true dirty set of each
window: the writable working set against the window length.
"""
import math
import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..bindings.constants import MEM_LOG_DIRTY_PAGES, PAGE_SIZE, RING_BACKENDS
from ..bindings.page_sample import sample_page_crc32c
from ..bindings.vm import VM
from .workloads import WorkloadSpec

METHODS = ("page-sampling", "dirty-bitmap", "dirty-ring")
#: QEMU 7.2: sample-pages per GiB, default and accepted range
DEFAULT_SAMPLE_PAGES = 512
MIN_SAMPLE_PAGES = 128
MAX_SAMPLE_PAGES = 4096
#: QEMU samples only RAMBlocks of at least MIN_RAMBLOCK_SIZE << 10 bytes
MIN_SAMPLED_BYTES = 128 << 10
#: QEMU's dirty-ring reaper thread harvests every second
REAP_INTERVAL = 1.0
MIB = 1 << 20
PAGES_PER_MIB = MIB // PAGE_SIZE
#: the most window seconds one measure() runs (virtual time)
MAX_CALC_TIME = 3600.0


def check_calc_time(calc_time, name="calc_time"):
    """calc_time (seconds) as a float: a finite number > 0 and at most an hour."""
    if isinstance(calc_time, bool) or not isinstance(calc_time, numbers.Real):
        raise TypeError("%s must be a number of seconds, got %r" % (name, calc_time))
    t = float(calc_time)
    if not math.isfinite(t) or t <= 0:
        raise ValueError("%s must be > 0 seconds (and finite), got %r" % (name, calc_time))
    if t > MAX_CALC_TIME:
        raise ValueError("%s must be at most %g seconds, got %r" % (name, MAX_CALC_TIME,
                                                                    calc_time))
    return t


def check_sample_pages(sample_pages, name="sample_pages"):
    """sample_pages per GiB as an int in QEMU's range [128, 4096]."""
    if isinstance(sample_pages, bool) or not isinstance(sample_pages, numbers.Integral):
        raise TypeError("%s must be a whole number of pages per GiB, got %r"
                        % (name, sample_pages))
    v = int(sample_pages)
    if not MIN_SAMPLE_PAGES <= v <= MAX_SAMPLE_PAGES:
        raise ValueError("%s must be in [%d, %d] pages per GiB (QEMU's range), got %d"
                         % (name, MIN_SAMPLE_PAGES, MAX_SAMPLE_PAGES, v))
    return v


def check_methods(methods):
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("methods must name at least one of %s" % ", ".join(METHODS))
    for m in methods:
        if m not in METHODS:
            raise ValueError("unknown method %r; choose from %s" % (m, ", ".join(METHODS)))
    return list(dict.fromkeys(methods))


def qemu_mib_per_s(pages, msec):
    """QEMU's integer dirty-bitmap / dirty-ring figure: whole MiB of `pages`,
    x 1000 / msec (do_calculate_dirtyrate)."""
    return ((int(pages) * PAGE_SIZE) >> 20) * 1000 // max(1, int(msec))


@dataclass
class Estimate:
    """One method's estimate over one period."""
    method: str
    calc_time: float        # seconds
    dirty_pages: float      # pages the method says the period dirtied
    detail: dict = field(default_factory=dict)

    @property
    def pages_per_s(self):
        return self.dirty_pages / self.calc_time

    @property
    def mib_per_s(self):
        return self.pages_per_s / PAGES_PER_MIB

    def as_dict(self):
        return dict(method=self.method, calc_time=self.calc_time, dirty_pages=self.dirty_pages,
                    pages_per_s=self.pages_per_s, mib_per_s=self.mib_per_s, **self.detail)


def _logged_slots(vm, slots):
    if slots is not None:
        return [int(s) for s in slots]
    return [s.slot for s in vm.slots() if s.flags & MEM_LOG_DIRTY_PAGES]


class PageSampling:
    """QEMU 7.2's page sampling on the VM's slots with guest memory (``slots``:
    default every slot). ``seed`` seeds the page draws (QEMU: a fresh GRand)."""

    def __init__(self, vm, sample_pages=DEFAULT_SAMPLE_PAGES, seed=None, slots=None):
        self.vm = vm
        self.sample_pages = check_sample_pages(sample_pages)
        self._rng = np.random.default_rng(seed)
        ids = [s.slot for s in vm.slots()] if slots is None else [int(s) for s in slots]
        self._blocks = []               # (slot, npages, sampled page indices)
        for slot in ids:
            npages = vm.slot_info(slot).npages
            nbytes = npages * PAGE_SIZE
            count = (nbytes * self.sample_pages) >> 30
            if nbytes < MIN_SAMPLED_BYTES or count == 0 or npages < 2:
                continue                # QEMU skips blocks this small
            self._blocks.append((slot, npages, np.empty(0, dtype=np.uint64)))
        if not self._blocks:
            raise ValueError("no slot is large enough to sample %d pages per GiB (a slot needs "
                             "at least %d KiB and one sample)" % (self.sample_pages,
                                                                  MIN_SAMPLED_BYTES >> 10))
        self._hashes: List[np.ndarray] = []

    @property
    def samples(self):
        return sum((npages * PAGE_SIZE * self.sample_pages) >> 30
                   for _, npages, _ in self._blocks)

    def start(self):
        """Draw the pages and hash them (the period starts)."""
        blocks, hashes = [], []
        for slot, npages, _ in self._blocks:
            count = (npages * PAGE_SIZE * self.sample_pages) >> 30
            pages = self._rng.integers(0, npages - 1, size=count, dtype=np.uint64)
            blocks.append((slot, npages, pages))
            hashes.append(sample_page_crc32c(self.vm, slot, pages))
        self._blocks, self._hashes = blocks, hashes

    def finish(self, calc_time):
        """Hash the sampled pages again: the estimate over the period."""
        t = check_calc_time(calc_time)
        if not self._hashes:
            raise ValueError("PageSampling.finish() before start()")
        dirty = samples = pages = 0
        qemu_mb = 0
        for (slot, npages, sampled), old in zip(self._blocks, self._hashes):
            dirty += int(np.count_nonzero(sample_page_crc32c(self.vm, slot, sampled) != old))
            samples += sampled.size
            pages += npages
            qemu_mb += (npages * PAGE_SIZE) >> 20
        self._hashes = []
        p = dirty / samples
        est = p * pages
        # binomial: dirty ~ B(samples, p); 1.96 sigma, at least one sample's worth
        sigma = pages * math.sqrt(p * (1 - p) / samples)
        msec = max(1, int(round(t * 1000)))
        return Estimate("page-sampling", t, est, dict(
            samples=samples, dirty_samples=dirty, block_pages=pages,
            sample_pages=self.sample_pages, stderr_pages=sigma,
            qemu_mb_per_s=dirty * qemu_mb * 1000 // (samples * msec)))


class DirtyBitmap:
    """A sync at the start (the log is collected and cleared) and one at the
    end: the pages written in between, each once (``slots``: default every
    slot with dirty logging)."""

    def __init__(self, vm, slots=None):
        self.vm = vm
        self.slots = _logged_slots(vm, slots)
        if not self.slots:
            raise ValueError("the dirty-bitmap method needs a slot with dirty logging "
                             "(MEM_LOG_DIRTY_PAGES)")
        if vm.backend == "ring":
            raise ValueError("the dirty-bitmap method needs a bitmap backend, not the ring "
                             "(QEMU refuses it with the dirty ring enabled)")

    def start(self):
        self.vm.collect_slots(self.slots)

    def finish(self, calc_time):
        t = check_calc_time(calc_time)
        pages = int(self.vm.collect_slots(self.slots).size)
        return Estimate("dirty-bitmap", t, float(pages), dict(
            qemu_mb_per_s=qemu_mib_per_s(pages, round(t * 1000))))


class DirtyRing:
    """Per-vCPU dirty ring entries over the period: harvested at the end and
    whenever :meth:`reap` is called (a full ring, the reaper's interval)."""

    def __init__(self, vm):
        if vm.backend not in RING_BACKENDS or not vm.ring_entries:
            raise ValueError("the dirty-ring method needs a VM with dirty rings (backend "
                             "'ring', or 'kvm' with ring_entries), not %r" % vm.backend)
        self.vm = vm
        self.entries = [0] * vm.vcpus
        self.reaps = 0

    def reap(self):
        """Harvest every vCPU's ring (counting its entries), then reset them."""
        for v in range(self.vm.vcpus):
            self.entries[v] += int(self.vm.harvest(v).size)
        self.vm.reset_dirty_rings()
        self.reaps += 1

    def start(self):
        self.reap()
        self.entries = [0] * self.vm.vcpus
        self.reaps = 0

    def finish(self, calc_time):
        t = check_calc_time(calc_time)
        self.reap()
        msec = round(t * 1000)
        return Estimate("dirty-ring", t, float(sum(self.entries)), dict(
            vcpu_entries=list(self.entries), reaps=self.reaps,
            qemu_mb_per_s=sum(qemu_mib_per_s(n, msec) for n in self.entries)))


@dataclass
class Window:
    """One period of a measure() run: the truth and each method's estimate."""
    calc_time: float
    writes: int                     # page writes in the period
    true_pages: int                 # distinct pages written: the true dirty set
    ring_true_entries: Optional[int] = None   # distinct pages per reap epoch, summed
    estimates: Dict[str, Estimate] = field(default_factory=dict)

    def error(self, method):
        """Relative error of a method's estimate against the true dirty set."""
        if not self.true_pages:
            return 0.0 if not self.estimates[method].dirty_pages else math.inf
        return self.estimates[method].dirty_pages / self.true_pages - 1

    def as_dict(self):
        return dict(calc_time=self.calc_time, writes=self.writes, true_pages=self.true_pages,
                    true_pages_per_s=self.true_pages / self.calc_time,
                    ring_true_entries=self.ring_true_entries,
                    estimates={m: dict(e.as_dict(), error=self.error(m))
                               for m, e in self.estimates.items()})


class _Stream:
    """The workload's writes on the virtual clock, fed to every method's VM."""

    CHUNK = 1 << 15

    def __init__(self, spec, first_gfn, npages, vcpus, source=None):
        self.spec = spec
        self.gens = [] if source is not None else spec.generators(first_gfn, npages, vcpus)
        self.source = source            # or a callable(n) -> next n gfns (one vCPU)
        self.vcpus = vcpus
        self.value = 0
        self._next = 0

    def take(self, n):
        """[(vcpu, gfns)] of the next n writes, split over the vCPUs in turn."""
        out = []
        left = n
        while left > 0:
            k = min(left, self.CHUNK)
            if self.source is not None:
                gfns, v = self.source(k), 0
            else:
                v = self._next
                self._next = (self._next + 1) % self.vcpus
                gfns, _ = self.gens[v].generate(k)
                gfns = gfns.copy()
            if not gfns.size:
                break
            out.append((v, gfns))
            left -= gfns.size
        return out


class Measurement:
    """The VMs of one measure() run: one per method, all fed the same writes."""

    def __init__(self, guest_size, methods, backend="flat", vcpus=1, ring_entries=4096,
                 sample_pages=DEFAULT_SAMPLE_PAGES, sampling_seed=0, reap_interval=REAP_INTERVAL):
        self.methods = check_methods(methods)
        if isinstance(guest_size, bool) or not isinstance(guest_size, numbers.Integral):
            raise TypeError("guest_size must be a whole number of bytes, got %r" % (guest_size,))
        if guest_size <= 0 or guest_size % PAGE_SIZE:
            raise ValueError("guest_size must be a positive multiple of 4 KiB, got %d"
                             % guest_size)
        self.npages = int(guest_size) // PAGE_SIZE
        self.sample_pages = check_sample_pages(sample_pages)
        self.reap_interval = (check_calc_time(reap_interval, "reap_interval")
                              if reap_interval else 0.0)
        if backend == "ring":
            raise ValueError("backend is the dirty-bitmap method's backend; the dirty-ring "
                             "method always uses the ring")
        self.vms: Dict[str, VM] = {}
        self.trackers: Dict[str, object] = {}
        try:
            for m in self.methods:
                if m == "page-sampling":
                    vm = VM("flat", vcpus=vcpus, guest_memory=True)
                    vm.set_user_memory_region(0, 0, guest_size, 0)
                    self.trackers[m] = PageSampling(vm, self.sample_pages, seed=sampling_seed)
                elif m == "dirty-bitmap":
                    vm = VM(backend, vcpus=vcpus)
                    vm.set_user_memory_region(0, 0, guest_size, MEM_LOG_DIRTY_PAGES)
                    self.trackers[m] = DirtyBitmap(vm)
                else:
                    vm = VM("ring", vcpus=vcpus, ring_entries=ring_entries)
                    vm.set_user_memory_region(0, 0, guest_size, MEM_LOG_DIRTY_PAGES)
                    self.trackers[m] = DirtyRing(vm)
                self.vms[m] = vm
        except BaseException:
            self.close()
            raise
        self._seen = np.zeros(self.npages, dtype=bool)
        self._epoch: List[np.ndarray] = []
        self._epoch_true = 0
        self._value = 0
        self._t = 0.0               # virtual time in the current window
        self._last_reap = 0.0

    def close(self):
        for vm in self.vms.values():
            vm.close()
        self.vms = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _reap(self):
        ring = self.trackers.get("dirty-ring")
        if ring is None:
            return
        ring.reap()                                       # type: ignore[attr-defined]
        self._end_epoch()

    def _end_epoch(self):
        if self._epoch:
            self._epoch_true += int(np.unique(np.concatenate(self._epoch)).size)
        self._epoch = []

    def write(self, vcpu, gfns):
        """One chunk of writes, to every method's VM (the ring's reaped when full)."""
        self._value += 1
        for m, vm in self.vms.items():
            if m != "dirty-ring":
                vm.write(gfns, vcpu, self._value)
        self._seen[gfns] = True
        ring_vm = self.vms.get("dirty-ring")
        if ring_vm is None:
            return
        i = 0
        while i < gfns.size:
            res = ring_vm.write(gfns[i:], vcpu, self._value)
            self._epoch.append(gfns[i:i + res.applied])
            i += res.applied
            if res.ring_full:
                self._reap()

    def run(self, stream, calc_time, rate):
        """One window of calc_time seconds at rate writes/s: a Window."""
        t = check_calc_time(calc_time)
        for tr in self.trackers.values():
            tr.start()                                    # type: ignore[attr-defined]
        self._seen[:] = False
        self._epoch, self._epoch_true = [], 0
        total = int(round(rate * t))
        done = 0
        # writes in reaper intervals: the ring is reaped every reap_interval s
        cuts = [total]
        if self.reap_interval and "dirty-ring" in self.trackers:
            k = int(t / self.reap_interval)
            cuts = [int(round(rate * self.reap_interval * (i + 1))) for i in range(k)
                    if rate * self.reap_interval * (i + 1) < total] + [total]
        for i, cut in enumerate(cuts):
            for vcpu, gfns in stream.take(cut - done):
                self.write(vcpu, gfns)
                done += gfns.size
            if i + 1 < len(cuts):
                self._reap()
        self._end_epoch()
        win = Window(t, done, int(np.count_nonzero(self._seen)))
        if "dirty-ring" in self.trackers:
            win.ring_true_entries = self._epoch_true
        for m in self.methods:
            win.estimates[m] = self.trackers[m].finish(t)  # type: ignore[attr-defined]
        return win


def measure(spec, guest_size, calc_times, methods=METHODS, backend="flat", vcpus=1,
            ring_entries=4096, sample_pages=DEFAULT_SAMPLE_PAGES, sampling_seed=0,
            reap_interval=REAP_INTERVAL, first_gfn=0, npages=None, warmup=0.0):
    """Run workload `spec` (a WorkloadSpec; its rate in writes/s on the virtual
    clock) on a guest of guest_size bytes over [first_gfn, first_gfn + npages)
    (default: all of it), one window per calc_times entry, one after the
    other, after `warmup` s of writes; every method measures every window.
    Returns a list of Window."""
    if not isinstance(spec, WorkloadSpec):
        raise TypeError("spec must be a WorkloadSpec, got %r" % (spec,))
    times = [check_calc_time(t) for t in calc_times]
    if not times:
        raise ValueError("calc_times must hold at least one window length")
    if sum(times) + float(warmup) > MAX_CALC_TIME:
        raise ValueError("calc_times add up to more than %g s of virtual time" % MAX_CALC_TIME)
    if spec.rate * (sum(times) + float(warmup)) > 1e9:
        raise ValueError("rate x calc_times is more than 1e9 writes: shorter windows or a "
                         "lower rate")
    with Measurement(guest_size, methods, backend, vcpus, ring_entries, sample_pages,
                     sampling_seed, reap_interval) as meas:
        total = meas.npages
        npages = total - first_gfn if npages is None else int(npages)
        if not (0 <= first_gfn and 0 < npages and first_gfn + npages <= total):
            raise ValueError("the workload range [%d, %d) must lie in the guest's %d pages"
                             % (first_gfn, first_gfn + npages, total))
        stream = _Stream(spec, first_gfn, npages, vcpus)
        if warmup:
            meas.run(stream, check_calc_time(warmup, "warmup"), spec.rate)
        return [meas.run(stream, t, spec.rate) for t in times]


def replay(gfns, guest_size, calc_time, methods=METHODS, backend="flat", ring_entries=4096,
           sample_pages=DEFAULT_SAMPLE_PAGES, sampling_seed=0, reap_interval=REAP_INTERVAL):
    """The methods over one window in which one vCPU wrote `gfns` in order
    (evenly spread over calc_time s): a Window. For a recorded guest, e.g.
    the firmware guest's draws between two reads of its counter."""
    gfns = np.ascontiguousarray(gfns, dtype=np.uint64)
    t = check_calc_time(calc_time)
    pos = [0]

    def source(n):
        out = gfns[pos[0]:pos[0] + n]
        pos[0] += out.size
        return out
    with Measurement(guest_size, methods, backend, 1, ring_entries, sample_pages,
                     sampling_seed, reap_interval) as meas:
        if gfns.size and int(gfns.max()) >= meas.npages:
            raise ValueError("gfns must be below the guest's %d pages, got %d"
                             % (meas.npages, int(gfns.max())))
        stream = _Stream(None, 0, 0, 1, source=source)
        return meas.run(stream, t, gfns.size / t)
