"""Sweeps: a grid of compare cells run through any concurrent.futures.Executor.

``run_sweep(grid, executor)`` submits one task per cell (sizes x dirty counts
x backends x layouts) and merges the results into one table: a JSON document,
CSV rows and a plot (the compare plot, per layout). Executors:

  * ``concurrent.futures.ProcessPoolExecutor`` (the default of
    ``pykvmdirty sweep``): local processes;
  * a Dask cluster: ``dask.distributed.Client(address).get_executor()`` is a
    concurrent.futures.Executor (``pykvmdirty sweep --dask tcp://HOST:PORT``,
    ``pip install 'pykvmdirty[dask]'``); every worker needs pykvmdirty
    installed.

In deterministic mode cells carry counters and modelled kernel time only (no
clock readings), so the merged table is identical whichever executor ran it:
tests compare local processes with a Dask LocalCluster cell for cell.
"""
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import os
import re

from . import compare as cmp
from ..costmodel import CostModel


@dataclasses.dataclass(frozen=True)
class Grid:
    """A sweep grid: one compare Scenario per layout, all in one table."""

    sizes_gib: tuple = cmp.DEFAULT_SIZES
    dirty: tuple = cmp.DEFAULT_DIRTY
    backends: tuple = cmp.ALL_BACKENDS
    layouts: tuple = ("one",)
    slot_gib: float = 1
    repeats: int = cmp.DEFAULT_REPEATS
    seed: int = 0
    deterministic: bool = True

    def __post_init__(self):
        object.__setattr__(self, "layouts", tuple(self.layouts))
        if not self.layouts:
            raise ValueError("at least one layout is needed")
        if len(set(self.layouts)) != len(self.layouts):
            raise ValueError("layout listed twice in %s" % ",".join(self.layouts))
        for layout in self.layouts:
            if layout not in cmp.LAYOUTS:
                raise ValueError("unknown layout %r; choose from %s"
                                 % (layout, ", ".join(cmp.LAYOUTS)))
        self.scenarios()  # validates sizes, dirty counts, backends, ...

    def scenarios(self):
        return [cmp.Scenario(sizes_gib=self.sizes_gib, dirty=self.dirty,
                             backends=self.backends, repeats=self.repeats, layout=layout,
                             slot_gib=self.slot_gib, seed=self.seed,
                             deterministic=self.deterministic)
                for layout in self.layouts]

    def tasks(self):
        return [t for s in self.scenarios() for t in s.cells()]


def run_sweep(grid, executor, cost_model=None, progress=None):
    """Run every cell of `grid` on `executor` (any concurrent.futures.Executor);
    returns {"grid", "cost_model", "cells"} with cells in grid order."""
    model = cost_model or CostModel()
    md = model.to_dict()
    futures = [executor.submit(cmp.run_cell_task, dict(t, cost_model=md)) for t in grid.tasks()]
    if progress:
        for f in concurrent.futures.as_completed(futures):
            progress(f.result())
    cells = [f.result() for f in futures]
    cmp.add_ratios(cells, model)
    d = dataclasses.asdict(grid)
    for k in ("sizes_gib", "dirty", "backends", "layouts"):
        d[k] = list(d[k])
    return {"grid": d, "cost_model": md, "cells": cells}


def comparable(result):
    """The cells as canonical JSON text: equal for equal results."""
    return json.dumps(result["cells"], sort_keys=True)


# --------------------------------------------------------------------------
# executors
# --------------------------------------------------------------------------
DASK_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s:/]+(:\d{1,5})?$")


def check_dask_address(address):
    if not isinstance(address, str) or not DASK_ADDRESS.match(address):
        raise ValueError("--dask needs a scheduler address like tcp://HOST:PORT, got %r"
                         % (address,))
    return address


@contextlib.contextmanager
def dask_executor(address=None, client=None, timeout=30):
    """A concurrent.futures.Executor on a Dask cluster: connect to `address`
    (tcp://HOST:PORT) or use an existing dask.distributed Client."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError("--dask needs dask.distributed: pip install 'pykvmdirty[dask]'") \
            from None
    own = client is None
    if own:
        check_dask_address(address)
        try:
            client = Client(address, timeout=timeout)
        except OSError as e:
            raise ValueError("cannot reach the Dask scheduler at %s: %s" % (address, e)) \
                from None
    try:
        # pure=False: every cell runs (Dask would otherwise dedupe equal calls)
        yield client.get_executor(pure=False)
    finally:
        if own:
            client.close()


@contextlib.contextmanager
def local_executor(workers=None):
    """Local processes (one per core by default)."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as ex:
        yield ex


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def write_json(path, result):
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


def write_csv(path, result):
    header, rows = cmp.csv_rows(result["cells"])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def as_compare_results(result):
    """One compare-shaped result per layout (for format_table and plot)."""
    out = []
    g = result["grid"]
    for layout in g["layouts"]:
        cells = [c for c in result["cells"] if c["layout"] == layout]
        scenario = dict(g, layout=layout)
        out.append({"scenario": scenario, "cost_model": result["cost_model"], "cells": cells,
                    "goals": cmp.goals(cells)})
    return out


def plot(result, path):
    """The compare plot; with several layouts, one file per layout
    (PATH with -LAYOUT before the extension) besides PATH for the first."""
    parts = as_compare_results(result)
    written = []
    for i, part in enumerate(parts):
        if i == 0:
            p = path
        else:
            root, ext = os.path.splitext(path)
            p = "%s-%s%s" % (root, part["scenario"]["layout"], ext or ".png")
        cmp.plot(part, p)
        written.append(p)
    return written
