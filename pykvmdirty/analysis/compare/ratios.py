"""How each cell compares: its cost over flat's and over the kernel's
KVM_GET_DIRTY_LOG, and the question the grid is for: how fast a few dirty
pages are found in a big guest (1000 dirty pages in 512 GiB), against the
targets the logs were built to meet."""
from typing import Any, Dict, List

from ...costmodel import CostModel
from .scenario import gib_to_pages


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


def _find(cells, size, dirty, backend, layout="one"):
    for c in cells:
        if (c["size_gib"] == size and c["dirty"] == dirty and c["backend"] == backend
                and c["layout"] == layout and c["status"] == "ok" and cost_of(c)):
            return c
    return None


#: the case the grid is for: a few dirty pages in a big guest
QUESTION_SIZE_GIB = 512
QUESTION_DIRTY = 1000


def question(size=QUESTION_SIZE_GIB, dirty=QUESTION_DIRTY):
    """The heading of goals(): what its ratios answer."""
    return ("How fast are %d dirty pages found in a %s GiB guest? (the case the "
            "two-level log is for; time ratios of the measured medians)" % (dirty, size))


def goals(cells, size=QUESTION_SIZE_GIB, dirty=QUESTION_DIRTY):
    """The answers to question(size, dirty), where the cells ran (timed runs
    only): each a ratio of two cells' median times against the target the
    logs were built to meet. [{goal, value, reads, target, met, detail}]:
    value is the first cell's time over the second's, read as "<value>x
    <reads>" ("faster": the second is faster; "the time": the first costs
    that many times the second)."""
    out: List[Dict[str, Any]] = []
    if not cells or cells[0]["deterministic"]:
        return out
    flat = _find(cells, size, dirty, "flat")
    two = _find(cells, size, dirty, "twolevel")
    read = _find(cells, size, dirty, "read")
    fnz = _find(cells, size, dirty, "flatnonzero")
    where = "%s GiB, %d dirty" % (size, dirty)

    def goal(name, num, num_ns, den, den_ns, target, met, source="", reads="faster"):
        v = num_ns / den_ns
        out.append({"goal": "%s (%s)" % (name, where), "value": v, "reads": reads,
                    "target": target,
                    "met": met(v), "detail": "%s %.1f µs%s / %s %.1f µs"
                    % (num, num_ns / 1e3, source, den, den_ns / 1e3)})
    if flat and two:
        goal("two-level log vs a flat bitmap scan", "flat",
             flat["collect_ns"], "twolevel", two["collect_ns"], ">= 25x", lambda v: v >= 25)
    if two:
        goal("two-level log vs the kernel's KVM_GET_DIRTY_LOG", "kernel GET",
             two["kvm_ref_ns"], "twolevel", two["collect_ns"], ">= 300x", lambda v: v >= 300,
             " (%s)" % two["kvm_ref"])
    if flat and read:
        goal("flat bitmap scan vs only reading its bitmap", "flat", flat["collect_ns"], "read",
             read["collect_ns"], "<= 1.3x", lambda v: v <= 1.3, reads="the time")
    if flat and fnz:
        goal("flat bitmap scan vs numpy flatnonzero", "flatnonzero",
             fnz["collect_ns"], "flat", flat["collect_ns"], ">= 3x", lambda v: v >= 3)
    return out
