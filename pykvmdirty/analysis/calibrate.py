"""Calibrate the cost model on the real kernel (/dev/kvm) of this machine.

Each measurement drives the real backend (``VM(backend="kvm")``) and prices
one event of :class:`~pykvmdirty.costmodel.CostModel`:

=====================  ====================================================
field                  measured as
=====================  ====================================================
word_ns                classic KVM_GET_DIRTY_LOG of a clean slot: slope of
                       time over 64-bit log words between two slot sizes
                       (per GiB of slot: ``word_ns * 4096``)
reprotect_ns           (GET with N dirty pages - GET clean) / N
tlb_flush_ns           CLEAR of one dirty page - CLEAR of a clean range -
                       reprotect_ns (the flush a re-protection costs)
write_fault_ns         a real guest re-dirties N pages a GET just
                       re-protected (guest re-dirty round), minus the same
                       writes once the pages are writable, per page
ring_full_exit_ns      KVM_RUN entry and immediate KVM_EXIT_DIRTY_RING_FULL
                       exit while the ring is full
ring_harvest_ns        harvesting a full ring (acquire/copy/release), / entry
ring_reset_ns          KVM_RESET_DIRTY_RINGS of those entries, / entry
ioctl_ns               KVM_CLEAR_DIRTY_LOG of a clean 64-page range: the
                       cost of one call
=====================  ====================================================

Every other field keeps CostModel's default. Timings are medians of
repeated calls (``time.perf_counter_ns`` around one C call, buffers
allocated beforehand). :func:`calibrate` raises :class:`KvmUnusable` with the
reason where /dev/kvm cannot run a guest.
"""
import datetime
import math
import os
import platform
import statistics
import time
from typing import Any, Dict

import numpy as np

from ..bindings.constants import MEM_LOG_DIRTY_PAGES, PAGE_SHIFT, RING_MAX_ENTRIES
from ..bindings.vm import VM, backend_available
from ..bindings.timing import TimedLogCalls
from ..costmodel import GIB_WORDS, CostModel
from ..errors import KvmDirtyError

GIB_PAGES = (1 << 30) >> PAGE_SHIFT

#: (measurement sizes, repeats) per mode
SETTINGS = {
    "quick": dict(small_gib=1, big_gib=8, get_repeats=15, dirty=1000, dirty_repeats=4,
                  ring_entries=4096, ring_repeats=3, clear_repeats=50),
    "full": dict(small_gib=1, big_gib=64, get_repeats=40, dirty=4000, dirty_repeats=8,
                 ring_entries=RING_MAX_ENTRIES, ring_repeats=4, clear_repeats=200),
}

MEASURED = ("word_ns", "reprotect_ns", "tlb_flush_ns", "write_fault_ns", "ring_full_exit_ns",
            "ring_harvest_ns", "ring_reset_ns", "ioctl_ns")


class KvmUnusable(RuntimeError):
    """/dev/kvm is missing or cannot run the guest here; str() says why."""


def kvm_unusable_reason():
    """None if a real guest write works here, else why not (a sentence)."""
    ok, why = backend_available("kvm")
    if not ok:
        return "/dev/kvm unusable: %s" % (why or "unavailable")
    try:
        with VM("kvm") as vm:
            vm.set_user_memory_region(0, 0, 2 << 20, MEM_LOG_DIRTY_PAGES)
            res = vm.write([3], value=1)
            bits = vm.get_dirty_log(0)
    except (OSError, ValueError) as e:
        return "/dev/kvm unusable: a probe guest write failed: %s" % e
    if res.applied != 1 or int(bits[0]) != 1 << 3:
        return "/dev/kvm unusable: a probe guest write was not logged (applied %d)" % res.applied
    return None


def median(values):
    return float(statistics.median(values))


def _slope(x0, y0, x1, y1):
    return (y1 - y0) / float(x1 - x0)


class _Timer(TimedLogCalls):
    """GET/CLEAR timed with preallocated buffers, and a timed guest write."""

    def __init__(self, vm, slot):
        super().__init__(vm, slot)
        self.vm = vm

    def write(self, gfns, value):
        t0 = time.perf_counter_ns()
        res = self.vm.write(gfns, value=value)
        t1 = time.perf_counter_ns()
        if res.applied != gfns.size:
            raise KvmUnusable("the guest stopped after %d of %d writes (exit %d)"
                              % (res.applied, gfns.size, res.exit_reason))
        return t1 - t0


def _slot_vm(gib, manual=False):
    vm = VM("kvm")
    if manual:
        vm.enable_manual_protect()
    vm.set_user_memory_region(0, 0, gib << 30, MEM_LOG_DIRTY_PAGES)
    return vm


def measure_get(s, out):
    """word_ns (and GET per GiB) from clean classic GETs at two slot sizes."""
    times = {}
    for gib in (s["small_gib"], s["big_gib"]):
        with _slot_vm(gib) as vm:
            t = _Timer(vm, 0)
            t.get()  # first GET after enabling: warm
            times[gib] = median([t.get() for _ in range(s["get_repeats"])])
    words = {g: g * GIB_WORDS for g in times}
    small, big = s["small_gib"], s["big_gib"]
    out["get_clean_ns"] = times
    out["word_ns"] = max(_slope(words[small], times[small], words[big], times[big]), 0.0)
    out["get_per_gib_ns"] = out["word_ns"] * GIB_WORDS
    return times


def measure_dirty(s, out, rng):
    """reprotect_ns from GET with N dirty pages; write_fault_ns from the
    guest's re-dirty of those pages."""
    n, gib = s["dirty"], s["small_gib"]
    pages = np.sort(rng.choice(gib * GIB_PAGES, n, replace=False)).astype(np.uint64)
    with _slot_vm(gib) as vm:
        t = _Timer(vm, 0)
        t.write(pages, 1)  # first touch: host pages allocated, not measured
        t.get()
        clean = median([t.get() for _ in range(s["get_repeats"])])
        dirty, redirty, writable = [], [], []
        for i in range(s["dirty_repeats"]):
            redirty.append(t.write(pages, i + 2))      # every page faults
            writable.append(t.write(pages, i + 2))     # no page faults
            dirty.append(t.get())                      # re-protects n pages
    out["get_clean_small_ns"] = clean
    out["get_dirty_ns"] = median(dirty)
    out["reprotect_ns"] = max((median(dirty) - clean) / n, 0.0)
    out["redirty_round_per_page_ns"] = median(redirty) / n
    out["writable_round_per_page_ns"] = median(writable) / n
    out["write_fault_ns"] = max((median(redirty) - median(writable)) / n, 0.0)


def measure_clear(s, out):
    """ioctl_ns: CLEAR of a clean 64-page range; tlb_flush_ns: CLEAR of one
    dirty page minus that, minus one page's re-protection."""
    with _slot_vm(s["small_gib"], manual=True) as vm:
        t = _Timer(vm, 0)
        t.clear(0, t.npages)
        clean = median([t.clear(0, 64) for _ in range(s["clear_repeats"])])
        one = []
        page = np.array([5], dtype=np.uint64)
        for i in range(min(s["clear_repeats"], 50)):
            t.write(page, i + 1)
            one.append(t.clear(0, 64))
    out["clear_clean_ns"] = clean
    out["clear_one_dirty_ns"] = median(one)
    out["ioctl_ns"] = clean
    out["tlb_flush_ns"] = max(median(one) - clean - out.get("reprotect_ns", 0.0), 0.0)


def measure_ring(s, out, rng):
    """Harvest and reset per entry of a ring filled to its soft limit, and
    the KVM_RUN round trip of a ring-full exit."""
    entries = s["ring_entries"]
    with VM("kvm", ring_entries=entries) as vm:
        vm.set_user_memory_region(0, 0, 4 << 30, MEM_LOG_DIRTY_PAGES)
        pages = rng.choice(4 * GIB_PAGES, entries, replace=False).astype(np.uint64)
        calls = TimedLogCalls(vm, 0)
        harvest, reset, full_exit, nharvested = [], [], [], []
        for i in range(s["ring_repeats"] + 1):
            res = vm.write(pages, value=i + 1)
            if not res.ring_full:
                raise KvmUnusable("a %d-entry ring did not fill after %d writes"
                                  % (entries, pages.size))
            for _ in range(20):  # full: enter and exit at once
                t0 = time.perf_counter_ns()
                r2 = vm.write(pages[res.applied:], value=i + 1)
                full_exit.append(time.perf_counter_ns() - t0)
                if r2.applied or not r2.ring_full:
                    raise KvmUnusable("a full ring accepted a write")
            harvest_ns, n = calls.harvest(0, entries)
            t2 = time.perf_counter_ns()
            m = vm.reset_dirty_rings()
            t3 = time.perf_counter_ns()
            if m != n:
                raise KvmUnusable("KVM_RESET_DIRTY_RINGS reset %d of %d harvested" % (m, n))
            if i:  # the first round faults host pages in: not measured
                harvest.append(harvest_ns / n)
                reset.append((t3 - t2) / n)
                nharvested.append(n)
    out["ring_entries"] = entries
    out["ring_harvested_per_round"] = int(median(nharvested))
    out["ring_harvest_ns"] = median(harvest)
    out["ring_reset_ns"] = median(reset)
    out["ring_full_exit_ns"] = median(full_exit)


def calibrate(quick=False, seed=0, progress=None):
    """Measure on the real kernel; returns (CostModel, details dict).

    details holds every raw figure (ns) and "measured": the CostModel fields
    set from measurements (the others keep their defaults). Raises
    KvmUnusable where /dev/kvm cannot run the guest."""
    why = kvm_unusable_reason()
    if why:
        raise KvmUnusable(why)
    s = SETTINGS["quick" if quick else "full"]
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {"mode": "quick" if quick else "full", "settings": dict(s)}
    steps = [("GET per GiB (clean)", lambda: measure_get(s, out)),
             ("re-protect and write fault per page", lambda: measure_dirty(s, out, rng)),
             ("CLEAR per call", lambda: measure_clear(s, out)),
             ("ring harvest and reset per entry", lambda: measure_ring(s, out, rng))]
    try:
        for name, fn in steps:
            if progress:
                progress(name)
            fn()
    except KvmDirtyError as e:
        raise KvmUnusable("/dev/kvm failed during calibration: %s" % e) from None
    fields: Dict[str, float] = {}
    for f in MEASURED:
        v = out[f]
        if not (isinstance(v, float) and math.isfinite(v)):
            raise KvmUnusable("measurement %s gave %r" % (f, v))
        fields[f] = round(v, 3)
    # the two-level summary words are read by the same loop as leaf words
    fields["summary_word_ns"] = fields["word_ns"]
    out["measured"] = sorted(fields)
    return CostModel.from_dict(fields), out


def machine_description():
    """This machine, as a calibration source names it: host, CPU, kernel."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s (%s, %d CPUs, Linux %s)" % (platform.node(), cpu, os.cpu_count() or 0,
                                           platform.release())


def sources(details, when=None):
    """{field: source} of the measured fields, for CostModel.save."""
    when = when or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    src = "measured by `pykvmdirty calibrate%s` on %s, %s" % (
        " --quick" if details.get("mode") == "quick" else "", machine_description(), when)
    out = {f: src for f in details["measured"]}
    if "summary_word_ns" in out:  # copied, not measured on its own
        out["summary_word_ns"] = ("word_ns " + src + " (summary words are read by the "
                                  "same kernel loop as leaf words)")
    return out


def summary(model, details):
    """Human-readable lines: each measured field and the raw figures."""
    d = details
    lines = [
        "calibrated on /dev/kvm (%s mode); ns per event:" % d["mode"],
        "  GET per GiB of slot (clean)   %10.1f   (word_ns %.3f; GET %s GiB %.0f, %s GiB %.0f)"
        % (d["get_per_gib_ns"], model.word_ns, d["settings"]["small_gib"],
           d["get_clean_ns"][d["settings"]["small_gib"]], d["settings"]["big_gib"],
           d["get_clean_ns"][d["settings"]["big_gib"]]),
        "  re-protect per dirty page     %10.1f   (GET with %d dirty %.0f vs clean %.0f)"
        % (model.reprotect_ns, d["settings"]["dirty"], d["get_dirty_ns"],
           d["get_clean_small_ns"]),
        "  write fault per page          %10.1f   (re-dirty round %.0f/page, writable %.0f/page)"
        % (model.write_fault_ns, d["redirty_round_per_page_ns"],
           d["writable_round_per_page_ns"]),
        "  TLB flush                     %10.1f   (CLEAR of 1 dirty page %.0f)"
        % (model.tlb_flush_ns, d["clear_one_dirty_ns"]),
        "  CLEAR per call (ioctl_ns)     %10.1f" % model.ioctl_ns,
        "  ring harvest per entry        %10.1f   (%d entries per round, ring of %d)"
        % (model.ring_harvest_ns, d["ring_harvested_per_round"], d["ring_entries"]),
        "  ring reset per entry          %10.1f" % model.ring_reset_ns,
        "  ring-full exit + re-entry     %10.1f" % model.ring_full_exit_ns,
        "other fields keep CostModel's defaults: %s"
        % ", ".join(f for f in CostModel.field_names() if f not in d["measured"]),
    ]
    return lines
