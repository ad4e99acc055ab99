"""What a cell's dirty log holds and what a cell commits, checked against the
memory limit before the grid runs (pykvmdirty.limits)."""
from ... import limits
from .scenario import RING_ENTRIES, gib_to_pages, ring_vcpus, slot_layout


def ring_entries_of(backend):
    """Ring entries per vCPU of a cell's VM: only the ring backend's has rings."""
    return RING_ENTRIES if backend == "ring" else 0


def log_bytes(backend, slots, vcpus=1, ring_entries=None):
    """Bytes of dirty-log memory a backend keeps for these slots at full
    population (limits.log_memory, the one model of it: every array of the
    log, the kernel's bitmaps on kvm, the vCPUs' rings on ring).
    ring_entries: per vCPU; default the cell's (ring_entries_of)."""
    if ring_entries is None:
        ring_entries = ring_entries_of(backend)
    return limits.log_memory(backend, [n for _, _, n in slots], vcpus, ring_entries)


def cell_estimate(c):
    """limits.Estimate of what one cell (a Scenario.cells() dict) commits."""
    npages = gib_to_pages(c["size_gib"])
    slots = slot_layout(npages, c["layout"], c["slot_gib"])
    vcpus = ring_vcpus(c["dirty"]) if c["backend"] == "ring" else 1
    return limits.compare_cell_estimate(npages, [n for _, _, n in slots], c["backend"],
                                        c["dirty"], vcpus, ring_entries_of(c["backend"]))


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
