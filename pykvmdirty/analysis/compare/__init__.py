"""The runner behind ``pykvmdirty compare`` and ``pykvmdirty sweep``.

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

One module per job: scenario (the grid, slot layout, dirty pages), memory
(log bytes, estimates against the memory limit), run (cells, baselines, the
grid), ratios (ratios to flat and the kernel, the few-dirty-pages question),
output (table, CSV, plot).
"""
from .memory import cell_estimate, check_memory, log_bytes, memory_estimate, memory_refusals
from .output import CSV_FIELDS, csv_rows, format_table, plot, plot_figure, shown_log_bytes
from .ratios import add_ratios, cost_of, goals
from .run import (flatnonzero_gfns, kernel_events, read_gfns, run_cell, run_cell_task, run_compare,
                  skipped_cell)
from .scenario import (ALL_BACKENDS, BASELINES, DEFAULT_DIRTY, DEFAULT_REPEATS, DEFAULT_SIZES,
                       LAYOUTS, MAX_SLOT_PAGES, MAX_SLOTS, PAGES_PER_GIB, RING_ENTRIES,
                       RING_RESERVED, Scenario, dirty_pages, gib_to_pages, pages_to_bitmap,
                       ring_vcpus, scenario_dict, slot_layout)

__all__ = [
    "Scenario", "run_compare", "run_cell", "run_cell_task", "skipped_cell", "kernel_events",
    "add_ratios", "cost_of", "goals", "format_table", "csv_rows", "plot", "plot_figure",
    "shown_log_bytes", "CSV_FIELDS", "log_bytes", "cell_estimate", "memory_estimate",
    "check_memory", "memory_refusals", "gib_to_pages", "slot_layout", "dirty_pages",
    "pages_to_bitmap", "ring_vcpus", "scenario_dict", "ALL_BACKENDS", "BASELINES",
    "DEFAULT_SIZES", "DEFAULT_DIRTY", "DEFAULT_REPEATS", "LAYOUTS", "MAX_SLOTS",
    "PAGES_PER_GIB", "RING_ENTRIES", "RING_RESERVED", "MAX_SLOT_PAGES", "flatnonzero_gfns",
    "read_gfns",
]
