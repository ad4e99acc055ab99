"""A compare result for people and tools: the terminal table, CSV rows and
the plot."""
from ...units import format_bytes
from .ratios import cost_of, question


def _fmt_bytes(n):
    return "-" if n is None else format_bytes(n, digits=4)


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
             "size; ring: with the vCPUs' rings); kvm: the full size, the kernel's two bitmaps "
             "with the user side's; read / flatnonzero: baselines on the same bitmap (C "
             "read-only scan / numpy);",
             "write ns/p: guest re-dirty of the pages after a collect, per page (the first "
             "write after re-protection: emulated fault, or a real uffd / KVM fault)."]
    lines.extend(foot)
    if result.get("goals"):
        lines.append("")
        lines.append(question())
        for g in result["goals"]:
            lines.append("  [%s] %s: %.3gx %s (target %s) — %s"
                         % ("met" if g["met"] else "MISSED", g["goal"].split(" (")[0], g["value"],
                            g.get("reads", "faster"), g["target"], g["detail"]))
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
