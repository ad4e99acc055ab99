"""Dirty-log sync strategies: how a pass learns which pages to send. One
class per strategy; the controller calls them and never tests a strategy's
name. Which backends a strategy runs on is the strategy's own check
(check_backend, at configuration).

- ``global``: collect every slot at the start of a pass (QEMU's
  migration_bitmap_sync);
- ``per-slot``: collect each slot just before scanning it (the 2010 proposal);
- ``chunked-clear``: manual protect; GET without clearing at pass start, CLEAR
  each 2^clear_shift-page chunk just before its first page is sent (QEMU's
  clear_bmap);
- ``ring``: harvest and reset the dirty rings at pass start and whenever a
  vCPU's ring fills.

Every final (stop-and-copy) sync collects and clears everything.
"""
import collections
import time

import numpy as np


#: one slot's work in a pass: the SendRegion, its gfns (None: every page),
#: when their dirty information was sampled (sender clock), and the GET
#: bitmap for chunked clear (else None)
#: What a sync found in one slot: gfns (sorted, unique) and/or, for
#: chunked clear, the GET bitmap (ORed into the migration bitmap whole, and
#: the mask the slot's chunks are CLEARed with); gfns then holds only the
#: pages carried from early reaps.
SyncItem = collections.namedtuple("SyncItem", "slot gfns sample_ns bitmap")


class SyncStrategy:
    """Base: the global collect, used by every final sync."""
    name = ""
    uses_ring = False          # harvests the dirty rings (needs a ring backend)
    collects_per_slot = False  # iterate passes collect each slot just before sending it
    manual_protect = False     # needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (GET + CLEAR)

    @classmethod
    def check_backend(cls, backend):
        """ValueError if this strategy cannot run on `backend`."""

    def prepare(self, vm):
        """Set the VM up before its memslots are created."""
        if self.manual_protect:
            vm.enable_manual_protect()

    def sync(self, ctl, final=False):
        """Sync every slot: (items, collect ns, scan ns)."""
        return self.collect_all(ctl)

    def collect_all(self, ctl):
        per_carry = ctl.take_carry_per_slot()
        collect_ns = 0
        items = []
        for i, sl in enumerate(ctl.slots):
            g, c = ctl.timed(ctl.vm.collect, sl.slot)
            collect_ns += c
            if per_carry is not None and per_carry[i].size:
                g = np.union1d(g, per_carry[i])
            items.append(SyncItem(sl, g, ctl.now(), None))
        return items, collect_ns, 0

    def reap(self, ctl):
        """A vCPU's ring filled (or is filling): take the dirty pages now (the
        controller carries them to the next sync). Collecting every slot
        harvests and resets the rings of a ring VM."""
        parts = [ctl.timed(ctl.vm.collect, sl.slot)[0] for sl in ctl.slots]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


class GlobalSync(SyncStrategy):
    name = "global"


class PerSlotSync(SyncStrategy):
    name = "per-slot"
    collects_per_slot = True

    def collect_slot(self, ctl, sl):
        """Collect one slot just before it is sent (with pages carried over
        from an early reap): (gfns, collect ns)."""
        g, c = ctl.timed(ctl.vm.collect, sl.slot)
        carry = ctl.take_carry_for(sl)
        if carry is not None and carry.size:
            g = np.union1d(g, carry)
        return g, c


class ChunkedClearSync(SyncStrategy):
    name = "chunked-clear"
    manual_protect = True

    @classmethod
    def check_backend(cls, backend):
        if backend == "ring":
            raise ValueError("strategy 'chunked-clear' needs a bitmap backend (GET/CLEAR), "
                             "not %r" % backend)
        if backend == "uffd":
            raise ValueError("strategy 'chunked-clear' needs KVM_CLEAR_DIRTY_LOG (manual "
                             "protect), which the uffd backend lacks (PAGEMAP_SCAN reports and "
                             "re-protects in one step); use 'global' or 'per-slot'")

    def sync(self, ctl, final=False):
        if final:
            return self.collect_all(ctl)
        per_carry = ctl.take_carry_per_slot()
        collect_ns = scan_ns = 0
        items = []
        for i, sl in enumerate(ctl.slots):
            bm, c = ctl.timed(ctl.vm.get_dirty_log, sl.slot)
            collect_ns += c
            # the GET bitmap is ORed into the migration bitmap where it lies
            # (no gfn list); it stays the CLEAR mask of the slot's chunks
            # virtual clock: the OR's modelled walk of the words, charged here
            # (real time: the controller times the OR itself)
            scan_ns += ctl.scan_cost(bm.size, time.perf_counter_ns(), per_word=True)
            carry = per_carry[i] if per_carry is not None and per_carry[i].size else None
            items.append(SyncItem(sl, carry, ctl.now(), bm))
        return items, collect_ns, scan_ns


class RingSync(SyncStrategy):
    name = "ring"
    uses_ring = True

    @classmethod
    def check_backend(cls, backend):
        if backend not in ("ring", "kvm"):
            raise ValueError("strategy 'ring' needs the ring (or kvm) backend, not %r" % backend)

    def harvest_all(self, ctl):
        """Harvest every vCPU's ring, then reset: (gfns, modelled/measured ns)."""
        def harvest():
            vm = ctl.vm
            parts = [vm.entries_to_gfns(e) for e in (vm.harvest(v) for v in range(vm.vcpus))
                     if e.size]
            vm.reset_dirty_rings()
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return ctl.timed(harvest, extra_calls=ctl.vm.vcpus + 1)

    def sync(self, ctl, final=False):
        gfns, collect_ns = self.harvest_all(ctl)
        carry = ctl.take_carry()
        if carry is not None:
            gfns = np.concatenate([gfns, carry])
        t0 = time.perf_counter_ns()
        per = ctl.split_by_slot(gfns)
        scan_ns = ctl.scan_cost(gfns.size, t0)
        sample = ctl.now()
        return [SyncItem(sl, g, sample, None) for sl, g in zip(ctl.slots, per)], collect_ns, \
            scan_ns

    def reap(self, ctl):
        return self.harvest_all(ctl)[0]


STRATEGY_CLASSES = {cls.name: cls for cls in (GlobalSync, PerSlotSync, ChunkedClearSync,
                                                RingSync)}
STRATEGIES = tuple(STRATEGY_CLASSES)


def strategy_class(name):
    try:
        return STRATEGY_CLASSES[name]
    except KeyError:
        raise ValueError("unknown strategy %r; choose from %s"
                         % (name, ", ".join(STRATEGIES))) from None
