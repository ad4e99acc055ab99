"""``pykvmdirty qemu``: blind predictions of real QEMU 7.2 migrations, then the real runs.

For each cell the prediction is computed from a calibration file
(``pykvmdirty calibrate --qemu``) and the cell's settings only and written into
the JSON file before the cell's first QEMU run; then QEMU migrates the cell
--repeat times and the report judges the prediction against the runs' median
(or their spread where it is wider than the band).  With no cell flags it runs
the held-out grid; with --workload (and the flags of ``migrate``) that one cell.
"""
import os
import sys
from typing import Any, Dict, List

from ..units import RATE_HELP, SIZE_HELP
from ._args import check_output_paths, finite_float, write_output, positive_int, rate_arg, size_arg


def register(sub):
    p = sub.add_parser("qemu", help="blind predictions of real QEMU migrations, then the runs",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--calibration", metavar="FILE", action="append",
                   help="a calibration file from `pykvmdirty calibrate --qemu` (required "
                   "unless --calibrate); give it twice for a KVM and a TCG file")
    p.add_argument("--calibrate", action="store_true",
                   help="run the calibration cells first and save the file next to --json "
                   "(<json>.calibration-<accel>.json)")
    p.add_argument("--repeat", type=positive_int, default=5, help="QEMU runs per cell")
    p.add_argument("--interface", choices=["bitmap", "ring"], default="bitmap",
                   help="KVM's dirty interface of a single cell (ring: -accel "
                   "kvm,dirty-ring-size=4096; KVM only)")
    p.add_argument("--grid", default=None, help="the grid to run: heldout (default), "
                   "heldout-bitmap / heldout-ring (its cells without / with the dirty ring), "
                   "smoke (two quick cells)")
    p.add_argument("--workload", metavar="NAME",
                   help="run one cell with this workload: ab, uniform, hotspot, idle (default: "
                   "the grid); with --guest linux a Linux workload (idle, vm-<method>-<size>, "
                   "pagecache, sort, gzip; default vm-flip-16M) over the Linux grid")
    p.add_argument("--guest", choices=["firmware", "linux"], default="firmware",
                   help="the migrated guest: the project's firmware (default), or a real Linux "
                   "kernel with an initramfs built here (TCG)")
    p.add_argument("--kernel", metavar="PATH", default="",
                   help="--guest linux: the kernel (default: the newest /boot/vmlinuz-*)")
    p.add_argument("--model", metavar="FILE",
                   help="--guest linux: the workload model (a trace from an earlier run); "
                   "default: measure it now and save it next to --json")
    p.add_argument("--windows", type=positive_int, default=40,
                   help="--guest linux: windows of 50 ms the model measures (default 40)")
    p.add_argument("--warmup", type=finite_float, default=None,
                   help="seconds the guest runs before a migration (default 1; Linux 3)")
    p.add_argument("--guest-size", type=size_arg("--guest-size"), default=None,
                   metavar="SIZE", help="guest memory, a whole number of MiB (QEMU's -m): a "
                   "size (%s); default 1GiB (Linux: 256MiB)" % SIZE_HELP)
    p.add_argument("--start", type=size_arg("--start"), default="1MiB", metavar="SIZE",
                   help="workload range start (default 1MiB)")
    p.add_argument("--end", type=size_arg("--end"), default="100MiB", metavar="SIZE",
                   help="workload range end (default 100MiB)")
    p.add_argument("--rate", type=finite_float, default=0, help="pages/s (uniform, hotspot)")
    p.add_argument("--hot-fraction", type=float, default=0.05)
    p.add_argument("--hot-share", type=float, default=0.9)
    p.add_argument("--bandwidth", type=rate_arg("--bandwidth"), default="128MiB",
                   metavar="RATE", help="max-bandwidth: %s (default 128MiB)" % RATE_HELP)
    p.add_argument("--downtime-limit", type=float, default=0.3, help="seconds")
    p.add_argument("--auto-converge", action="store_true")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--timeout", type=float, default=30.0,
                   help="cancel a migration still running after this (seconds)")
    p.add_argument("--json", metavar="FILE", default="qemu-grid.json",
                   help="predictions (written before each cell's runs), runs and verdicts "
                   "(default qemu-grid.json)")
    p.add_argument("--plot", metavar="FILE", help="PNG: predicted / median per figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# -- the report -----------------------------------------------------------------------------

ROWS = (("status", "status"), ("total_time", "total ms"), ("downtime", "downtime ms"),
        ("dirty_sync_count", "syncs"), ("transferred", "MB"), ("normal", "normal pages"),
        ("setup_time", "setup ms"), ("duplicate", "zero pages"), ("throttle_max", "throttle %"))
GOAL_OF = {"status": "status", "total_time": "total_time", "downtime": "downtime",
           "dirty_sync_count": "syncs", "transferred": "transferred", "normal": "normal"}
WIDTHS = (38, 13, 10, 10, 21, 0)


def fmt(k, v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if k in ("total_time", "downtime", "setup_time"):
        return "%.0f" % (v * 1000)
    if k == "transferred":
        return "%.0f" % (v / 1e6)
    return "%.0f" % v


def _row(cols):
    out = ""
    for w, c in zip(WIDTHS, cols):
        out += ("%-*s" % (w, c)) if w else c
    return out.rstrip()


def verdict(j):
    if j is None:
        return ""
    if j["ok"]:
        return "ok (spread)" if j["against"] == "spread" else "ok"
    return "MISS (spread)" if j["against"] == "spread" else "MISS"


def table_lines(cells):
    """The report: per cell and figure, predicted, median [min - max], verdict."""
    lines = [_row(("cell", "figure", "predicted", "median", "[min - max]", "judged")),
             _row(("-" * 37, "-" * 12, "-" * 9, "-" * 9, "-" * 20, "-" * 13))]
    for c in cells:
        if c.get("skipped"):
            lines.append(_row((c["name"], "skipped", "", "", "", c["skipped"])))
            continue
        runs = [r for r in c["runs"] if "error" not in r]
        errors = [r["error"] for r in c["runs"] if "error" in r]
        if not runs:
            lines.append(_row((c["name"], "no run", "", "", "", "; ".join(errors))))
            continue
        accels = sorted({r.get("accel", "") for r in runs})
        label = "%s (%s, %d runs)" % (c["name"], "/".join(accels), len(runs))
        first = True
        for k, head in ROWS:
            p = c["prediction"].get(k)
            goal = GOAL_OF.get(k)
            j = c["judged"].get(goal) if goal else None
            if k == "status":
                statuses = [r["status"] for r in runs]
                med, rng = c["status_measured"], "%d of %d" % (
                    statuses.count(c["status_measured"]), len(runs))
            else:
                st = c["stats"][k]
                med = fmt(k, st["median"])
                rng = "[%s - %s]" % (fmt(k, st["min"]), fmt(k, st["max"]))
            lines.append(_row((label if first else "", head, fmt(k, p), med, rng, verdict(j))))
            first = False
        for e in errors:
            lines.append(_row(("", "run failed", "", "", "", e)))
        for goal, why in c.get("why", {}).items():
            head = "missed %s:" % goal
            for i, w in enumerate(why):
                lines.append("%-*s%s %s" % (WIDTHS[0], "", head if i == 0 else " " * len(head),
                                            w))
    return lines


def goal_summary(cells):
    """Per goal: cells within the band / cells judged (the issue's goal: >= 80 %)."""
    lines = []
    judged = [c for c in cells if c.get("judged")]
    for goal in ("status", "syncs", "transferred", "normal", "total_time", "downtime"):
        ok = sum(1 for c in judged if c["judged"][goal]["ok"])
        spread = sum(1 for c in judged if c["judged"][goal]["against"] == "spread")
        lines.append("%-12s %2d of %2d cells within the band (%3.0f%%)%s" % (
            goal, ok, len(judged), 100.0 * ok / max(len(judged), 1),
            ("; %d judged against the runs' spread (wider than the band)" % spread)
            if spread else ""))
    return lines


def ring_lines(pairs):
    lines = []
    for p in pairs:
        parts = []
        for goal, f in p["figures"].items():
            parts.append("%s %s%s" % (goal, "same sign" if f["same_sign"] else "OPPOSITE",
                                      " (measured difference within the runs' spread)"
                                      if f["within_spread"] else ""))
        lines.append("ring vs bitmap, %s vs %s: %s" % (p["ring"], p["bitmap"],
                                                        "; ".join(parts)))
    return lines


#: the plotted figures: (figure key, judged goal, label)
PLOTTED = (("total_time", "total_time", "total time"), ("downtime", "downtime", "downtime"),
           ("dirty_sync_count", "syncs", "syncs"), ("transferred", "transferred", "bytes sent"),
           ("normal", "normal", "normal pages"))
#: where a ratio of 0 (or a band reaching 0) is drawn on the log axis
RATIO_FLOOR = 1e-2


def plot_figure(cells):
    """The grid plot: one row per figure, one column per cell, on a log axis
    of predicted / median of the runs (1 = exact; a 60x miss no longer flattens
    the rest). Per cell: the figure's band around the median (grey bar, as
    judged: qemu/compare.py band()), the runs' spread min..max over the median
    (black line, where runs repeat), the prediction (dot: green within the
    band, red a miss; a triangle at the bottom: predicted 0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..qemu.compare import band
    cells = [c for c in cells if c.get("stats")]
    fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(max(8.0, 0.55 * len(cells) + 3), 11),
                             sharex=True, squeeze=False)
    xs = list(range(len(cells)))
    for ax, (key, goal, label) in zip(axes[:, 0], PLOTTED):
        for x, c in zip(xs, cells):
            st, p = c["stats"].get(key), c["prediction"].get(key)
            if not st or not st["median"] or p is None:
                ax.annotate("no median" if p is not None else "no prediction", (x, 1.0),
                            rotation=90, fontsize=6, ha="center", va="center", color="0.4")
                continue
            med = st["median"]
            lo, hi = band(goal, med)
            ax.bar(x, max(hi / med, RATIO_FLOOR) - max(lo / med, RATIO_FLOOR), 0.6,
                   bottom=max(lo / med, RATIO_FLOOR), color="0.85", zorder=1,
                   label="band" if x == 0 else None)
            if st.get("n", 1) > 1 and st["max"] > st["min"]:
                ax.plot([x, x], [max(st["min"] / med, RATIO_FLOOR),
                                 max(st["max"] / med, RATIO_FLOOR)], color="k", lw=2.5,
                        zorder=2, label="runs min-max" if x == 0 else None)
            ratio = p / med
            ok = lo <= p <= hi or (st["max"] - st["min"] > hi - lo and
                                   st["min"] <= p <= st["max"])
            ax.plot(x, max(ratio, RATIO_FLOOR), "v" if ratio <= 0 else "o",
                    color="tab:green" if ok else "tab:red", zorder=3, ms=6)
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.6, zorder=0)
        ax.set_ylabel("%s\npredicted / median" % label, fontsize=8)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xticks(xs)
    axes[-1, 0].set_xticklabels([c["name"] for c in cells], rotation=35, ha="right",
                                fontsize=7)
    fig.suptitle("blind predictions / real QEMU runs (log scale; grey: the band judged; "
                 "black: the runs' spread)", fontsize=9)
    fig.tight_layout()
    return fig


def plot(cells, path):
    import io

    import matplotlib.pyplot as plt
    fig = plot_figure(cells)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_output("--plot", path, buf.getvalue())


# -- the command ----------------------------------------------------------------------------

def _cells(args):
    from ..qemu.compare import DEFAULT_GRID, GRIDS, grid_configs
    from ..qemu.config import QemuConfig
    base = dict(guest_size=args.guest_size or (1 << 30), start=args.start, end=args.end,
                accel=args.accel, timeout=args.timeout)
    if args.warmup is not None:
        base["warmup"] = args.warmup
    if args.workload and args.workload not in ("ab", "uniform", "hotspot", "idle"):
        raise ValueError("--workload must be one of ab, uniform, hotspot, idle (or, with "
                         "--guest linux, a Linux workload), got %r" % args.workload)
    if args.workload:
        if args.grid:
            raise ValueError("--grid and --workload: give one (a grid, or one cell)")
        cfg = QemuConfig(workload=args.workload, rate=int(args.rate),
                         hot_fraction=args.hot_fraction, hot_share=args.hot_share,
                         bandwidth=args.bandwidth,
                         downtime_limit=args.downtime_limit, auto_converge=args.auto_converge,
                         interface=args.interface, **base)
        return [(args.workload + (" ring" if args.interface == "ring" else ""), cfg)]
    grid = args.grid or DEFAULT_GRID
    if grid not in GRIDS:
        raise ValueError("--grid must be one of %s, got %r" % (", ".join(GRIDS), grid))
    return grid_configs(QemuConfig(**base), GRIDS[grid])


def calibration_path(json_path, accel):
    stem = json_path[:-5] if json_path.endswith(".json") else json_path
    return "%s.calibration-%s.json" % (stem, accel)


def _prepare(args):
    """Every check that can fail before a QEMU runs: (cells, calibrations by accel,
    their files, the accelerators to calibrate first). ValueError: exit 2."""
    from ..qemu import calibration as cal
    from ..qemu import compare
    from ..qemu.compare import kvm_or_tcg, resolved_accel
    if args.interface == "ring" and args.accel == "tcg":
        raise ValueError("--interface ring is KVM's dirty ring: it cannot run with --accel tcg")
    cells = _cells(args)
    check_output_paths(args, ("--json", "--plot"))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'pykvmdirty[plot]'") from None
    compare.check_prediction()
    if not args.calibration and not args.calibrate:
        raise ValueError("--calibration FILE is required (from `pykvmdirty calibrate --qemu "
                         "--out FILE`), or --calibrate to run the calibration first")
    if args.calibration and args.calibrate:
        raise ValueError("--calibration and --calibrate: give one")
    kvm = kvm_or_tcg()
    calibrations: Dict[str, Any] = {}
    files: Dict[str, str] = {}
    to_calibrate: List[str] = []
    if args.calibration:
        for path in args.calibration:
            c = cal.load(path)
            if c.accel in calibrations:
                raise ValueError("--calibration %s and %s are both %s calibrations"
                                 % (files[c.accel], path, c.accel.upper()))
            calibrations[c.accel], files[c.accel] = c, path
    else:
        for _, cfg in cells:
            a = resolved_accel(cfg, kvm)
            if a not in to_calibrate:
                to_calibrate.append(a)
        for a in to_calibrate:
            path = calibration_path(args.json, a)
            check_output_paths(_Paths(path), ("--out",))
            files[a] = path
    return cells, calibrations, files, to_calibrate, kvm


class _Paths:
    def __init__(self, out):
        self.out = out


def run(args):
    from ..qemu import calibration as cal
    from ..qemu.compare import (GridStore, ring_vs_bitmap, run_cell, skip_cell,
                                skip_reason)
    from ..qemu.errors import QemuError
    if args.guest == "linux":
        from ._qemu_linux import run as run_linux
        return run_linux(args, table_lines, goal_summary, plot)
    # ValueError/TypeError: one line and status 2 from cli.main, with the
    # options named as typed (guest_size -> --guest-size)
    cells, calibrations, files, to_calibrate, kvm = _prepare(args)
    log = sys.stderr
    bar = None
    try:
        for a in to_calibrate:
            print("calibrating (%s): about 40 s" % a.upper(), file=log, flush=True)
            c = cal.calibrate_qemu(accel=a, on_progress=lambda s: print("  " + s, file=log,
                                                                         flush=True))
            c.save(files[a])
            calibrations[c.accel] = c
            files[c.accel] = files[a]
            print("wrote %s" % files[a], file=log)
        hashes = {a: cal.file_hash(p) for a, p in files.items()}
        for a, c in sorted(calibrations.items()):
            print("calibration %s (%s, sha256 %s, %s, %s):" % (files[a], a.upper(),
                                                               hashes[a][:16], c.machine,
                                                               c.date), file=log)
            for line in c.lines():
                print("  " + line, file=log)
        store = GridStore(args.json, {
            "repeat": args.repeat, "grid": args.grid or ("one cell" if args.workload
                                                         else "heldout"),
            "calibrations": {a: {"file": os.path.abspath(files[a]), "sha256": hashes[a],
                                 "calibration": calibrations[a].to_file_dict()}
                             for a in calibrations}})
        store.write()
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=len(cells) * args.repeat, file=sys.stderr)
        for name, cfg in cells:
            why = skip_reason(cfg, calibrations, kvm)
            if why:
                skip_cell(name, cfg, why, store)
                if bar:
                    bar.update(args.repeat)
                continue
            accel = kvm if cfg.accel == "auto" else cfg.accel
            if bar:
                bar.set_description(name)

            def on_sample(s, _bar=bar):
                if _bar:
                    _bar.set_postfix_str("%s %.1fs sync %d thr %d%%" % (
                        s["status"], s["t"], s["dirty_sync_count"], s["throttle"]))

            def on_run(i, _bar=bar):
                if _bar:
                    _bar.update(1)
            run_cell(name, cfg, calibrations[accel], hashes[accel], args.repeat, store,
                     on_sample=on_sample, on_run=on_run)
        store.doc["ring_vs_bitmap"] = ring_vs_bitmap(store.cells)
        store.write()
    except QemuError as e:
        if bar:
            bar.close()
        print("pykvmdirty qemu: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print("pykvmdirty qemu: interrupted", file=sys.stderr)
        return 130
    if bar:
        bar.close()
    print("predicted (blind, written before the runs) against real QEMU 7.2: median "
          "[min - max] of %d runs" % args.repeat)
    for line in table_lines(store.cells):
        print(line)
    print()
    for line in goal_summary(store.cells) + ring_lines(store.doc["ring_vs_bitmap"]):
        print(line)
    print("wrote %s" % args.json)
    if args.plot:
        plot(store.cells, args.plot)
    return 0
