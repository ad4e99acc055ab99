"""Scenario runner behind ``pykvmdirty compare`` and ``pykvmdirty sweep``.

A scenario is a grid: guest sizes (GiB) x dirty page counts x backends, one
slot layout ("one" big slot, or "many" slots of ``slot_gib`` GiB each). For
every cell it

  * creates a VM with the backend, adds the slot(s) with dirty logging on,
  * repeats: dirty the same scattered pages (``vm.write``, untimed), then time
    ``vm.collect`` over every slot (collect + scan: sorted gfns, log cleared
    and pages re-protected),
  * checks the gfns found are exactly the pages written,
  * reports the median time, the kernel time a :class:`CostModel` gives for
    the counted events of one pass (write faults + collect), the bytes of
    log memory the backend keeps, and ratios to flat and to the real kernel
    (the kvm cell where /dev/kvm works, else the modelled kernel GET).

Two baselines run on the same bitmap, built from the same pages:
"flatnonzero" (numpy: ``np.flatnonzero`` over the words, then the set bits
of the non-zero words: what a Python user would write) and "read" (a plain
read-only C pass over the bitmap, ``kd_bitmap_to_gfns``: the floor any
bitmap scan pays for reading 16 MiB at 512 GiB).

Deterministic mode leaves out everything measured with a clock, and prices
cells with the cost model only, so the same grid gives byte-identical results
on any executor (local processes, Dask workers).
"""
import dataclasses
import math
import time
from typing import Any, Dict, List

import numpy as np

from .. import limits
from ..bindings.constants import (BACKENDS, CHUNK_PAGES, DIRTY_GFN_SIZE, MAX_SLOT_PAGES,
                                  MEM_LOG_DIRTY_PAGES, PAGE_SHIFT, RING_MAX_ENTRIES,
                                  RING_RESERVED_ENTRIES, USER_MEM_SLOTS)
from ..bindings.scan import bitmap_to_gfns
from ..bindings.vm import VM, backend_available
from ..costmodel import CostModel

GIB = 1 << 30
PAGES_PER_GIB = GIB >> PAGE_SHIFT
BASELINES = ("flatnonzero", "read")
ALL_BACKENDS = tuple(BACKENDS) + BASELINES  # flat twolevel bytemap ring kvm uffd + baselines
LAYOUTS = ("one", "many")
RING_ENTRIES = RING_MAX_ENTRIES  # KVM's maximum; vCPUs are added until the dirty pages fit
RING_RESERVED = RING_RESERVED_ENTRIES
MAX_SLOTS = USER_MEM_SLOTS
DEFAULT_SIZES = (1, 64, 512)
DEFAULT_DIRTY = (0, 1000, 100000)
DEFAULT_REPEATS = 5


# --------------------------------------------------------------------------
# scenario and validation
# --------------------------------------------------------------------------
def gib_to_pages(size_gib):
    """Pages of a guest of size_gib GiB; ValueError unless a positive whole
    number of 4 KiB pages."""
    if isinstance(size_gib, bool) or not isinstance(size_gib, (int, float)):
        raise ValueError("guest size must be a number of GiB, got %r" % (size_gib,))
    if not math.isfinite(size_gib) or size_gib <= 0:
        raise ValueError("guest size must be > 0 GiB, got %r" % (size_gib,))
    pages = size_gib * PAGES_PER_GIB
    if pages != int(pages):
        raise ValueError("guest size %r GiB is not a whole number of 4 KiB pages" % (size_gib,))
    return int(pages)


def slot_layout(npages, layout, slot_gib):
    """[(slot id, first page, npages)] for a guest of npages pages.

    Layout "one" is one slot where the kernel allows it; a larger guest is
    split into the fewest equal slots of at most MAX_SLOT_PAGES (2^31-1
    pages, KVM's cap), each a whole number of 2 MiB chunks: 24 TiB is four
    slots of 6 TiB. Layout "many" is slots of slot_gib GiB."""
    if layout not in LAYOUTS:
        raise ValueError("unknown layout %r; choose from %s" % (layout, ", ".join(LAYOUTS)))
    if layout == "one":
        if npages <= MAX_SLOT_PAGES:
            return [(0, 0, npages)]
        n = -(-npages // MAX_SLOT_PAGES) - 1
        per = MAX_SLOT_PAGES + 1
        while per > MAX_SLOT_PAGES:  # rounding up to a chunk may need one slot more
            n += 1
            per = -(-npages // n)
            per = -(-per // CHUNK_PAGES) * CHUNK_PAGES
        if n > MAX_SLOTS:
            raise ValueError("a guest of %d pages needs %d slots of at most %d pages, more "
                             "than KVM's %d slots" % (npages, n, MAX_SLOT_PAGES, MAX_SLOTS))
    else:
        per = gib_to_pages(slot_gib)
        if per > MAX_SLOT_PAGES:
            raise ValueError("slot size %r GiB exceeds KVM's %d pages per slot"
                             % (slot_gib, MAX_SLOT_PAGES))
        n = -(-npages // per)
        if n > MAX_SLOTS:
            raise ValueError("%d slots of %r GiB exceed KVM's %d slots; use larger --slot-gib"
                             % (n, slot_gib, MAX_SLOTS))
    return [(i, i * per, min(per, npages - i * per)) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A compare grid. Validated on creation (ValueError naming the bad value)."""

    sizes_gib: tuple = DEFAULT_SIZES
    dirty: tuple = DEFAULT_DIRTY
    backends: tuple = ALL_BACKENDS
    repeats: int = DEFAULT_REPEATS
    layout: str = "one"
    slot_gib: float = 1
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "sizes_gib", tuple(self.sizes_gib))
        object.__setattr__(self, "dirty", tuple(self.dirty))
        object.__setattr__(self, "backends", tuple(self.backends))
        if not self.sizes_gib:
            raise ValueError("at least one guest size is needed")
        if not self.dirty:
            raise ValueError("at least one dirty page count is needed")
        if not self.backends:
            raise ValueError("at least one backend is needed")
        for b in self.backends:
            if b not in ALL_BACKENDS:
                raise ValueError("unknown backend %r; choose from %s"
                                 % (b, ", ".join(ALL_BACKENDS)))
        if len(set(self.backends)) != len(self.backends):
            raise ValueError("backend listed twice in %s" % ",".join(self.backends))
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) \
                or self.repeats < 1:
            raise ValueError("repeats must be an integer >= 1, got %r" % (self.repeats,))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed must be an integer >= 0, got %r" % (self.seed,))
        pages = [gib_to_pages(s) for s in self.sizes_gib]
        for d in self.dirty:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
                raise ValueError("dirty page count must be an integer >= 0, got %r" % (d,))
            if d > min(pages):
                raise ValueError("%d dirty pages do not fit in a %r GiB guest (%d pages)"
                                 % (d, self.sizes_gib[pages.index(min(pages))], min(pages)))
        for p in pages:
            slot_layout(p, self.layout, self.slot_gib)

    def cells(self):
        """The grid as run_cell keyword dicts, in table order."""
        return [dict(size_gib=s, dirty=int(d), backend=b, layout=self.layout,
                     slot_gib=self.slot_gib, repeats=self.repeats, seed=self.seed,
                     deterministic=self.deterministic)
                for s in self.sizes_gib for d in self.dirty for b in self.backends]


def dirty_pages(npages, dirty, seed):
    """`dirty` distinct scattered pages of [0, npages), the same for every
    backend of a (size, dirty, seed) cell. Sorted uint64."""
    rng = np.random.default_rng([seed, npages, dirty])
    pages = rng.choice(npages, size=dirty, replace=False) if dirty else np.empty(0, np.int64)
    return np.sort(pages).astype(np.uint64)


def pages_to_bitmap(pages, npages):
    """KVM-layout bitmap (uint64 words) with the bits of `pages` set. Every
    page of it is written (populated), like a kernel log: np.zeros would map
    untouched pages to the shared zero page and flatter every scan."""
    bm = np.empty(-(-npages // 64), dtype=np.uint64)
    bm.fill(0)
    np.bitwise_or.at(bm, (pages >> np.uint64(6)).astype(np.intp),
                     np.left_shift(np.uint64(1), pages & np.uint64(63)))
    return bm


def log_bytes(backend, slots, vcpus=1, ring_entries=RING_ENTRIES):
    """Bytes of dirty-log memory a backend keeps for these slots.

    flat/uffd/baselines: 1 bit per page (64-bit words per slot); two-level:
    plus 1 summary bit per 2 MiB chunk; byte map: the kernel bitmap plus a
    byte per page; ring: 16-byte entries per vCPU (no bitmap); kvm: KVM
    allocates two bitmaps per slot (the live one and the GET buffer).
    """
    words = sum(-(-n // 64) for _, _, n in slots)
    bitmap = 8 * words
    if backend == "twolevel":
        summary_bits = [-(-n // CHUNK_PAGES) for _, _, n in slots]
        return bitmap + 8 * sum(-(-bits // 64) for bits in summary_bits)
    if backend == "bytemap":
        return bitmap + sum(n for _, _, n in slots)
    if backend == "hier":  # full population: pool + block index + levels
        groups = sum(-(-n // limits.HIER_GROUP_PAGES) for _, _, n in slots)
        chunks = (-(-n // CHUNK_PAGES) for _, _, n in slots)
        return ((limits.HIER_BLOCK_BYTES + limits.HIER_INDEX_PER_GROUP) * groups
                + 8 * sum(-(-c // 64) for c in chunks))
    if backend == "ring":
        return vcpus * ring_entries * DIRTY_GFN_SIZE
    if backend == "kvm":
        return 2 * bitmap
    return bitmap


def ring_vcpus(dirty):
    """vCPUs needed so `dirty` pages fit under each ring's soft limit."""
    return max(1, -(-dirty // (RING_ENTRIES - RING_RESERVED)))


# --------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------
def _cell_base(size_gib, dirty, backend, layout, slot_gib, repeats, seed, deterministic,
               slots):
    return {"size_gib": size_gib, "dirty": dirty, "backend": backend, "layout": layout,
            "slot_gib": slot_gib if layout == "many" else None, "slots": len(slots),
            "repeats": repeats, "seed": seed, "deterministic": deterministic,
            "status": "ok", "reason": None, "found": None, "collect_ns": None,
            "collect_ns_min": None, "modelled_ns": None, "modelled_collect_ns": None,
            "log_bytes": None, "log_resident_bytes": None,
            "vcpus": None, "stats": None}


def _write_all(vm, pages, vcpus):
    """Dirty `pages` (split over vcpus); returns gfns applied."""
    applied = 0
    for i, part in enumerate(np.array_split(pages, vcpus)):
        res = vm.write(part, vcpu=i)
        applied += res.applied
    return applied


def _run_backend(cell, pages, slots, model):
    backend = cell["backend"]
    vcpus = ring_vcpus(cell["dirty"]) if backend == "ring" else 1
    cell["vcpus"] = vcpus
    cell["log_bytes"] = log_bytes(backend, slots, vcpus)
    kw = {"ring_entries": RING_ENTRIES} if backend == "ring" else {}
    with VM(backend, vcpus=vcpus, **kw) as vm:
        for sid, first, n in slots:
            vm.set_user_memory_region(sid, first << PAGE_SHIFT, n << PAGE_SHIFT,
                                      MEM_LOG_DIRTY_PAGES)
        ids = [sid for sid, _, _ in slots]
        cell["collect_call"] = "collect_slots" if len(slots) > 1 else "collect"
        times = []
        write_times = []
        stats = None
        found = None
        for _ in range(cell["repeats"]):
            vm.reset_stats()
            t0 = time.perf_counter_ns()
            applied = _write_all(vm, pages, vcpus)
            write_times.append(time.perf_counter_ns() - t0)
            if applied != pages.size:
                raise RuntimeError("%s: only %d of %d dirty pages written"
                                   % (backend, applied, pages.size))
            if len(slots) > 1:  # guest-wide: one C call over every slot
                t0 = time.perf_counter_ns()
                found = vm.collect_slots(ids)
                times.append(time.perf_counter_ns() - t0)
            else:
                t0 = time.perf_counter_ns()
                found = vm.collect(slots[0][0])
                times.append(time.perf_counter_ns() - t0)
            stats = vm.stats
        if backend != "kvm":  # the kernel's bitmaps are not visible here
            cell["log_resident_bytes"] = sum(vm.log_memory(sid).resident for sid in ids)
    assert found is not None  # repeats >= 1
    if not np.array_equal(found, pages):
        cell["status"] = "error"
        cell["reason"] = ("collect found %d pages, %d written; they differ"
                          % (found.size, pages.size))
    cell["found"] = int(found.size)
    cell["stats"] = stats
    priced = kernel_events(backend, stats, len(slots))
    cell["modelled_ns"] = model.modelled_ns(priced, backend=backend)
    cell["modelled_collect_ns"] = model.collect_side_ns(priced, backend=backend)
    if not cell["deterministic"]:
        cell["collect_ns"] = float(np.median(times))
        cell["collect_ns_min"] = float(min(times))
        # guest side: dirtying the pages again after a collect (first writes
        # after re-protection: an emulated fault, a real uffd or KVM fault)
        if pages.size:
            cell["write_ns_per_page"] = float(np.median(write_times)) / pages.size


def kernel_events(backend, stats, nslots):
    """The counters to price. The real kvm and uffd backends cannot see the
    kernel's own events (faults, re-protection, flushes), so those are taken
    as a classic GET of the same pages would have them: one fault and one
    re-protection per distinct page collected, one flush per slot."""
    if backend not in ("kvm", "uffd"):
        return stats
    st = dict(stats)
    pages = st.get("pages_collected", 0)
    st["write_faults"] = max(st.get("write_faults", 0), pages)
    st["pages_reprotected"] = max(st.get("pages_reprotected", 0), pages)
    st["tlb_flushes"] = max(st.get("tlb_flushes", 0), min(pages, nslots))
    return st


def _flatnonzero_gfns(bm):
    """What a Python user would write: non-zero words, then their set bits."""
    words = np.flatnonzero(bm)
    bits = np.unpackbits(bm[words].view(np.uint8), bitorder="little").reshape(-1, 64)
    rows, cols = np.nonzero(bits)
    return words[rows].astype(np.uint64) * np.uint64(64) + cols.astype(np.uint64)


def _c_read_gfns(bm, npages, out):
    return bitmap_to_gfns(bm, npages, 0, out)


def _run_baseline(cell, pages, npages, slots):
    backend = cell["backend"]
    bm = pages_to_bitmap(pages, npages)
    cell["log_bytes"] = log_bytes("flat", slots)
    out = np.empty(max(pages.size, 1), dtype=np.uint64)
    fn = ((lambda: _flatnonzero_gfns(bm)) if backend == "flatnonzero"
          else (lambda: _c_read_gfns(bm, npages, out)))
    times = []
    found = None
    for _ in range(cell["repeats"]):
        t0 = time.perf_counter_ns()
        found = fn()
        times.append(time.perf_counter_ns() - t0)
    assert found is not None  # repeats >= 1
    if not np.array_equal(found, pages):
        cell["status"] = "error"
        cell["reason"] = "%s found %d pages, %d set; they differ" % (backend, found.size,
                                                                     pages.size)
    cell["found"] = int(found.size)
    if not cell["deterministic"]:
        cell["collect_ns"] = float(np.median(times))
        cell["collect_ns_min"] = float(min(times))


def run_cell(size_gib, dirty, backend, layout="one", slot_gib=1, repeats=DEFAULT_REPEATS,
             seed=0, deterministic=False, cost_model=None):
    """Run one cell; returns its result dict (status "ok", "skipped" with the
    reason a backend cannot run here, or "error" with what went wrong)."""
    if backend not in ALL_BACKENDS:
        raise ValueError("unknown backend %r; choose from %s" % (backend, ", ".join(ALL_BACKENDS)))
    npages = gib_to_pages(size_gib)
    slots = slot_layout(npages, layout, slot_gib)
    model = cost_model if cost_model is not None else CostModel()
    if isinstance(model, dict):
        model = CostModel.from_dict(model)
    cell = _cell_base(size_gib, dirty, backend, layout, slot_gib, repeats, seed,
                      deterministic, slots)
    if backend in BACKENDS:
        ok, why = backend_available(backend)
        if not ok:
            cell["status"] = "skipped"
            cell["reason"] = why or "unavailable"
            return cell
    pages = dirty_pages(npages, dirty, seed)
    try:
        if backend in BASELINES:
            _run_baseline(cell, pages, npages, slots)
        else:
            _run_backend(cell, pages, slots, model)
    except (OSError, MemoryError, RuntimeError) as e:
        # a backend that cannot hold this guest (e.g. uffd needs real memory)
        cell.update(status="error", reason="%s: %s" % (type(e).__name__, e), found=None,
                    collect_ns=None, collect_ns_min=None, modelled_ns=None,
                    modelled_collect_ns=None, stats=None)
    return cell


# --------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------
def cost_of(cell):
    """The number a cell is ranked by: median wall time, or the modelled
    kernel time of collection in deterministic mode (None for baselines)."""
    return cell["modelled_collect_ns"] if cell["deterministic"] else cell["collect_ns"]


def add_ratios(cells, cost_model=None):
    """Fill ratio_flat, ratio_kvm and kvm_ref_ns/kvm_ref in place.

    ratio_x = cell cost / x cost, same size, dirty count and layout (below 1
    is faster). The kvm reference is the measured kvm cell where it ran, else
    the cost model's classic KVM_GET_DIRTY_LOG (kvm_ref "model")."""
    model = cost_model or CostModel()
    if isinstance(model, dict):
        model = CostModel.from_dict(model)
    key = lambda c: (c["size_gib"], c["dirty"], c["layout"], c["slot_gib"])  # noqa: E731
    by = {}
    for c in cells:
        by[key(c) + (c["backend"],)] = c
    for c in cells:
        cost = cost_of(c)
        flat = by.get(key(c) + ("flat",))
        kvm = by.get(key(c) + ("kvm",))
        fcost = cost_of(flat) if flat and flat["status"] == "ok" else None
        if kvm and kvm["status"] == "ok" and cost_of(kvm):
            c["kvm_ref"], c["kvm_ref_ns"] = "measured", float(cost_of(kvm))
        else:
            npages = gib_to_pages(c["size_gib"])
            c["kvm_ref"] = "model"
            c["kvm_ref_ns"] = model.kernel_get_ns(npages, c["dirty"], c["slots"])
        ok = c["status"] == "ok" and cost is not None
        c["ratio_flat"] = float(cost / fcost) if ok and fcost else None
        c["ratio_kvm"] = float(cost / c["kvm_ref_ns"]) if ok and c["kvm_ref_ns"] else None
    return cells


def cell_estimate(c):
    """limits.Estimate of what one cell (a Scenario.cells() dict) commits."""
    npages = gib_to_pages(c["size_gib"])
    slots = slot_layout(npages, c["layout"], c["slot_gib"])
    vcpus = ring_vcpus(c["dirty"]) if c["backend"] == "ring" else 1
    return limits.compare_cell_estimate(npages, [n for _, _, n in slots], c["backend"],
                                        c["dirty"], vcpus, RING_ENTRIES)


def memory_estimate(scenario):
    """(largest estimate, its cell): what the hungriest cell of a Scenario
    commits (cells run one after another, each freeing its VM)."""
    best = None
    for c in scenario.cells():
        est = cell_estimate(c)
        if best is None or est.total > best[0].total:
            best = (est, c)
    return best


def _subject(c):
    what = "sizes_gib %g with backend %s" % (c["size_gib"], c["backend"])
    if c["layout"] == "many":
        what += " (layout many, slot_gib %g)" % c["slot_gib"]
    return what


def check_memory(scenario, max_memory=None, copies=1):
    """Raise limits.MemoryLimitError, before any cell runs, if the hungriest
    cell (times `copies` cells running at once) exceeds the memory limit.
    (sweep's rule; compare skips single cells instead: memory_refusals.)"""
    est, cell = memory_estimate(scenario)
    what = _subject(cell)
    if copies > 1:
        est = limits.parallel(est, copies, "workers")
        what += " on %d workers at once" % copies
    limits.check(est, limits.resolve_limit(max_memory), what)


def memory_refusals(scenario, max_memory=None):
    """{index in scenario.cells(): reason} of the cells whose own estimate
    exceeds the memory limit (e.g. flat or kvm at 24 TiB on a small machine):
    compare reports them as skipped with the reason and runs the rest.
    Raises limits.MemoryLimitError, naming the hungriest cell, when no cell
    fits (nothing would run)."""
    limit = limits.resolve_limit(max_memory)
    out = {}
    cells = scenario.cells()
    for i, c in enumerate(cells):
        try:
            limits.check(cell_estimate(c), limit, _subject(c))
        except limits.MemoryLimitError as e:
            out[i] = "memory: %s" % e
    if cells and len(out) == len(cells):
        check_memory(scenario, max_memory)
    return out


def skipped_cell(size_gib, dirty, backend, layout, slot_gib, repeats, seed, deterministic,
                 reason):
    """The result of a cell that did not run, with the reason."""
    slots = slot_layout(gib_to_pages(size_gib), layout, slot_gib)
    cell = _cell_base(size_gib, dirty, backend, layout, slot_gib, repeats, seed,
                      deterministic, slots)
    cell.update(status="skipped", reason=reason)
    return cell


def run_compare(scenario, cost_model=None, progress=None, executor=None, max_memory=None):
    """Run every cell of a Scenario. progress(cell) is called after each.
    executor: any concurrent.futures.Executor (cells run as separate tasks),
    or None to run them here in order. Returns the result dict. Run here,
    a cell whose estimate exceeds max_memory (default: see pykvmdirty.limits)
    is skipped with the reason; a grid of which no cell fits is refused first
    (limits.MemoryLimitError). With an executor the caller checks memory
    (check_memory with the number of workers)."""
    refused = memory_refusals(scenario, max_memory) if executor is None else {}
    model = cost_model or CostModel()
    tasks = scenario.cells()
    if executor is None:
        cells = []
        for i, t in enumerate(tasks):
            if i in refused:
                cells.append(skipped_cell(reason=refused[i], **t))
            else:
                cells.append(run_cell(cost_model=model, **t))
            if progress:
                progress(cells[-1])
    else:
        futures = [executor.submit(run_cell_task, dict(t, cost_model=model.to_dict()))
                   for t in tasks]
        cells = []
        for f in futures:
            cells.append(f.result())
            if progress:
                progress(cells[-1])
    add_ratios(cells, model)
    return {"scenario": scenario_dict(scenario), "cost_model": model.to_dict(),
            "cells": cells, "goals": goals(cells)}


def run_cell_task(kwargs):
    """Picklable entry point for executors (one dict argument)."""
    return run_cell(**kwargs)


def scenario_dict(s):
    d = dataclasses.asdict(s)
    for k in ("sizes_gib", "dirty", "backends"):
        d[k] = list(d[k])
    return d


# --------------------------------------------------------------------------
# goals of issue 6, checked from the cells
# --------------------------------------------------------------------------
def _find(cells, size, dirty, backend, layout="one"):
    for c in cells:
        if (c["size_gib"] == size and c["dirty"] == dirty and c["backend"] == backend
                and c["layout"] == layout and c["status"] == "ok" and cost_of(c)):
            return c
    return None


def goals(cells, size=512, dirty=1000):
    """The issue's goals at (size GiB, dirty), where the cells exist:
    [{goal, value, target, met, detail}]."""
    out: List[Dict[str, Any]] = []
    if not cells or cells[0]["deterministic"]:
        return out
    flat = _find(cells, size, dirty, "flat")
    two = _find(cells, size, dirty, "twolevel")
    read = _find(cells, size, dirty, "read")
    fnz = _find(cells, size, dirty, "flatnonzero")
    where = "%s GiB, %d dirty" % (size, dirty)

    def goal(name, num, num_ns, den, den_ns, target, met, source=""):
        v = num_ns / den_ns
        out.append({"goal": "%s (%s)" % (name, where), "value": v, "target": target,
                    "met": met(v), "detail": "%s %.1f us%s / %s %.1f us"
                    % (num, num_ns / 1e3, source, den, den_ns / 1e3)})
    if flat and two:
        goal("twolevel faster than flat", "flat", flat["collect_ns"], "twolevel",
             two["collect_ns"], ">= 25x", lambda v: v >= 25)
    if two:
        goal("twolevel vs real kernel GET", "kernel GET", two["kvm_ref_ns"], "twolevel",
             two["collect_ns"], ">= 300x (<= 1/300)", lambda v: v >= 300,
             " (%s)" % two["kvm_ref"])
    if flat and read:
        goal("flat vs plain read of its bitmap", "flat", flat["collect_ns"], "read",
             read["collect_ns"], "<= 1.3x", lambda v: v <= 1.3)
    if flat and fnz:
        goal("flat faster than numpy flatnonzero", "flatnonzero", fnz["collect_ns"], "flat",
             flat["collect_ns"], ">= 3x", lambda v: v >= 3)
    return out


# --------------------------------------------------------------------------
# output: table, CSV rows, plot
# --------------------------------------------------------------------------
def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.4g %s" % (n, unit))
        n /= 1024.0


def _fmt_us(ns):
    return "-" if ns is None else ("%.1f" % (ns / 1e3) if ns < 1e7 else "%.0f" % (ns / 1e3))


def _fmt_ratio(r):
    if r is None:
        return "-"
    return "%.3g" % r


def format_table(result):
    """A readable terminal table of a compare result."""
    cells = result["cells"]
    det = bool(cells and cells[0]["deterministic"])
    cost_head = "model µs" if det else "collect µs"
    head = ("%-8s %-7s %-11s %12s %9s %10s %12s %11s %10s %-s"
            % ("GiB", "dirty", "backend", cost_head, "× flat", "× kernel", "kernel µs*",
               "log mem", "write ns/p", "found / note"))
    lines = [head, "-" * len(head)]
    prev = None
    for c in cells:
        group = (c["size_gib"], c["dirty"], c["layout"])
        if prev is not None and group != prev:
            lines.append("")
        prev = group
        size = "%g" % c["size_gib"]
        if c["layout"] == "many" or c["slots"] > 1:  # GiB/slots
            size += "/%d" % c["slots"]
        if c["status"] == "ok":
            note = "%d" % c["found"]
        else:
            note = "%s: %s" % (c["status"], c["reason"])
        wns = c.get("write_ns_per_page")
        lines.append("%-8s %-7d %-11s %12s %9s %10s %12s %11s %10s %s" % (
            size, c["dirty"], c["backend"], _fmt_us(cost_of(c)), _fmt_ratio(c.get("ratio_flat")),
            _fmt_ratio(c.get("ratio_kvm")), _fmt_us(c["modelled_collect_ns"]),
            _fmt_bytes(shown_log_bytes(c)), "-" if wns is None else "%.0f" % wns, note))
    refs = {c.get("kvm_ref") for c in cells}
    foot = [""]
    if det:
        foot.append("model µs: cost-model kernel time of the collection (deterministic "
                    "mode, no clocks);")
    else:
        foot.append("collect µs: median over %d repeats of vm.collect on every slot "
                    "(collect + scan);" % result["scenario"]["repeats"])
    foot += ["× flat / × kernel: cell cost over flat's / over the kernel GET (%s); below 1 "
             "is faster;" % ("the kvm cell" if refs == {"measured"} else
                             "modelled classic KVM_GET_DIRTY_LOG where no kvm cell ran"),
             "kernel µs*: cost-model kernel time of the collection (log words, "
             "re-protection, flushes, ring harvest/reset; JSON modelled_ns adds the write "
             "faults);",
             "log mem: dirty-log memory resident after the cell's collects (mincore: a "
             "lazily backed log commits what got dirty; JSON log_bytes is the full-population "
             "size); kvm: the kernel's two bitmaps; read / flatnonzero: baselines on the same "
             "bitmap (C read-only scan / numpy);",
             "write ns/p: guest re-dirty of the pages after a collect, per page (the first "
             "write after re-protection: emulated fault, or a real uffd / KVM fault)."]
    lines.extend(foot)
    if result.get("goals"):
        lines.append("")
        lines.append("goals (issue 6):")
        for g in result["goals"]:
            lines.append("  [%s] %s: %.3gx (target %s) — %s"
                         % ("met" if g["met"] else "MISSED", g["goal"], g["value"], g["target"],
                            g["detail"]))
    return "\n".join(lines)


def shown_log_bytes(cell):
    """The log memory a table shows: measured resident bytes where this
    process holds the log, else (kvm, baselines) the allocation size."""
    resident = cell.get("log_resident_bytes")
    return cell["log_bytes"] if resident is None else resident


CSV_FIELDS = ("size_gib", "dirty", "backend", "layout", "slot_gib", "slots", "repeats",
              "seed", "deterministic", "status", "reason", "found", "collect_ns",
              "collect_ns_min", "write_ns_per_page", "modelled_ns", "modelled_collect_ns",
              "log_bytes", "log_resident_bytes", "vcpus", "ratio_flat", "ratio_kvm", "kvm_ref",
              "kvm_ref_ns")


def csv_rows(cells):
    """Flat rows (dicts) for CSV: the scalar fields, then stat_<counter>."""
    stat_names = sorted({k for c in cells if c.get("stats") for k in c["stats"]})
    header = list(CSV_FIELDS) + ["stat_" + s for s in stat_names]
    rows = []
    for c in cells:
        row = {k: c.get(k) for k in CSV_FIELDS}
        for s in stat_names:
            row["stat_" + s] = (c.get("stats") or {}).get(s)
        rows.append(row)
    return header, rows


def plot(result, path):
    """PNG of plot_figure(result)."""
    import matplotlib.pyplot as plt
    fig = plot_figure(result)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_figure(result):
    """Cost vs guest size (log-log, one line per backend) at the dirty count
    nearest 1000, and cost vs dirty pages at the largest size. A panel that
    would hold one point per backend (one size, or one dirty count) is left
    out; with one of each, one panel of bars, a bar per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in result["cells"] if c["status"] == "ok" and cost_of(c)]
    det = bool(result["cells"] and result["cells"][0]["deterministic"])
    ylabel = "modelled kernel time (µs)" if det else "collect + scan time (µs, median)"
    dirty_counts = sorted({c["dirty"] for c in result["cells"]})
    sizes = sorted({c["size_gib"] for c in result["cells"]})
    d_pick = min(dirty_counts, key=lambda d: abs(d - 1000)) if dirty_counts else 0
    s_pick = max(sizes) if sizes else 0
    backends = [b for b in result["scenario"]["backends"]]
    panels = (["size"] if len(sizes) > 1 else []) + (["dirty"] if len(dirty_counts) > 1 else [])
    if not panels:
        fig, ax = plt.subplots(1, 1, figsize=(7, 4.8))
        bars = [(b, cost_of(c) / 1e3) for b in backends for c in cells if c["backend"] == b]
        ax.bar([b for b, _ in bars], [v for _, v in bars])
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title("cost per backend, %g GiB guest, %d dirty pages" % (s_pick, d_pick))
        ax.grid(True, which="both", axis="y", alpha=0.3)
        fig.tight_layout()
        return fig
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    ax_of = dict(zip(panels, axes[0]))
    for b in backends:
        if "size" in ax_of:
            pts = sorted((c["size_gib"], cost_of(c) / 1e3) for c in cells
                         if c["backend"] == b and c["dirty"] == d_pick)
            if pts:
                ax_of["size"].plot(*zip(*pts), marker="o", label=b)
        if "dirty" in ax_of:
            pts = sorted((c["dirty"], cost_of(c) / 1e3) for c in cells
                         if c["backend"] == b and c["size_gib"] == s_pick)
            if pts:
                ax_of["dirty"].plot(*zip(*pts), marker="o", label=b)
    if "size" in ax_of:
        ax = ax_of["size"]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("guest size (GiB)")
        ax.set_ylabel(ylabel)
        ax.set_title("cost vs guest size, %d dirty pages" % d_pick)
    if "dirty" in ax_of:
        ax = ax_of["dirty"]
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_xlabel("dirty pages")
        ax.set_ylabel(ylabel)
        ax.set_title("cost vs dirty pages, %g GiB guest" % s_pick)
    for ax in axes[0]:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
