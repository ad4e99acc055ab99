"""Running cells: each backend's cell (a VM, its slots, writes and timed
collects) and the two baselines on the same bitmap; the whole grid, here or
on an executor."""
import time

import numpy as np

from ...bindings.constants import BACKENDS, MEM_LOG_DIRTY_PAGES, PAGE_SHIFT
from ...bindings.scan import bitmap_to_gfns
from ...bindings.vm import VM, backend_available
from ...costmodel import CostModel
from ... import limits
from .memory import log_bytes, memory_refusals, ring_entries_of
from .ratios import add_ratios, goals
from .scenario import (ALL_BACKENDS, BASELINES, DEFAULT_REPEATS, dirty_pages,
                       gib_to_pages, pages_to_bitmap, ring_vcpus, scenario_dict, slot_layout)


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
    kw = {"ring_entries": ring_entries_of(backend)} if backend == "ring" else {}
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
            # the slots' logs as mincore sees them, and the vCPUs' rings
            # (populated when the VM is made)
            cell["log_resident_bytes"] = (
                sum(vm.log_memory(sid).resident for sid in ids)
                + limits.ring_memory(backend, vcpus, ring_entries_of(backend)))
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


def flatnonzero_gfns(bm):
    """What a Python user would write: non-zero words, then their set bits."""
    words = np.flatnonzero(bm)
    bits = np.unpackbits(bm[words].view(np.uint8), bitorder="little").reshape(-1, 64)
    rows, cols = np.nonzero(bits)
    return words[rows].astype(np.uint64) * np.uint64(64) + cols.astype(np.uint64)


def read_gfns(bm, npages, out):
    return bitmap_to_gfns(bm, npages, 0, out)


def _run_baseline(cell, pages, npages, slots):
    backend = cell["backend"]
    bm = pages_to_bitmap(pages, npages)
    cell["log_bytes"] = log_bytes("flat", slots)
    out = np.empty(max(pages.size, 1), dtype=np.uint64)
    fn = ((lambda: flatnonzero_gfns(bm)) if backend == "flatnonzero"
          else (lambda: read_gfns(bm, npages, out)))
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
