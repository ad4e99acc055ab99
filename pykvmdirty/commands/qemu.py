"""``pykvmdirty qemu``: real QEMU 7.2 migrations next to the QEMU profile's prediction.

With no cell flags it runs the default grid (a-b at 1 GiB/s and 128 MiB/s with
auto-converge, a-b at 1 GiB/s with a 1 s limit, uniform and hotspot at two
rates); with --workload (and the flags of ``migrate``) it runs that one cell.
It first measures this machine's per-page send costs (two short migrations).
"""
import json
import sys

from ..migration.config import parse_size


def register(sub):
    p = sub.add_parser("qemu", help="real QEMU migrations next to the QEMU profile",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--workload", choices=["ab", "uniform", "hotspot", "idle"],
                   help="run one cell with this workload (default: the grid)")
    p.add_argument("--guest-size", default="1GiB")
    p.add_argument("--start", default="1MiB", help="workload range start (default 1MiB)")
    p.add_argument("--end", default="100MiB", help="workload range end (default 100MiB)")
    p.add_argument("--rate", type=float, default=0, help="pages/s (uniform, hotspot)")
    p.add_argument("--hot-fraction", type=float, default=0.05)
    p.add_argument("--hot-share", type=float, default=0.9)
    p.add_argument("--bandwidth", default="128MiB", help="max-bandwidth per second")
    p.add_argument("--downtime-limit", type=float, default=0.3, help="seconds")
    p.add_argument("--auto-converge", action="store_true")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--timeout", type=float, default=30.0,
                   help="cancel a migration still running after this (seconds)")
    p.add_argument("--json", metavar="FILE", help="per cell: measured and predicted")
    p.add_argument("--plot", metavar="FILE", help="PNG: predicted / measured per figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(k, v):
    if k in ("total_time", "downtime", "setup_time"):
        return "%.0f" % (v * 1000)
    if k == "transferred":
        return "%.0f" % (v / 1e6)
    return str(v)


COLS = (("status", "status"), ("total_time", "total ms"), ("setup_time", "setup ms"),
        ("downtime", "down ms"), ("dirty_sync_count", "syncs"), ("transferred", "MB"),
        ("normal", "normal"), ("duplicate", "dup"), ("throttle_max", "thr%"))


def print_table(cells, out=sys.stdout):
    print("measured / predicted (QEMU 7.2 on this machine / the QEMU profile)", file=out)
    head = "%-16s %-6s " % ("cell", "accel") + " ".join("%-17s" % h for _, h in COLS)
    print(head, file=out)
    for c in cells:
        row = "%-16s %-6s " % (c["name"], c["accel"])
        row += " ".join("%-17s" % ("%s/%s" % (_fmt(k, c["measured"][k]),
                                              _fmt(k, c["predicted"][k]))) for k, _ in COLS)
        print(row, file=out)
        missed = [g for g, ok in c["goals"].items() if not ok]
        fi = c.get("fault_rate_iter")
        print("%-16s inputs: guest %.0f writes/s while migrating, first writes/s under logging "
              "%.0f (bulk pass)%s; goals met %d/%d%s"
              % ("", c["guest_rate"], c["fault_rate"],
                 ", %.0f (after)" % fi if fi else "", len(c["goals"]) - len(missed),
                 len(c["goals"]), "" if missed else " (all)"), file=out)
        for g in missed:
            for i, why in enumerate(c["why"][g]):
                print("%-16s %s %s" % ("", ("missed %s:" % g) if i == 0 else
                                       " " * len("missed %s:" % g), why), file=out)


def plot(cells, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["total_time", "downtime", "dirty_sync_count", "transferred", "normal", "duplicate"]
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ratios = [c["predicted"][k] / c["measured"][k] if c["measured"][k] else 0 for c in cells]
        ax.bar([j + i * w for j in range(len(cells))], ratios, w, label=k)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cells))])
    ax.set_xticklabels([c["name"] for c in cells], rotation=20, fontsize=8)
    ax.set_ylabel("predicted / measured")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args):
    from ..qemu.compare import DEFAULT_GRID, grid_configs, run_cell
    from ..qemu.config import QemuConfig
    from ..qemu.errors import QemuError
    from ..qemu.measure import calibrate
    base = dict(guest_size=parse_size(args.guest_size, "guest_size"),
                start=parse_size(args.start, "start"), end=parse_size(args.end, "end"),
                accel=args.accel, timeout=args.timeout)
    if args.workload:
        cfg = QemuConfig(workload=args.workload, rate=int(args.rate),
                         hot_fraction=args.hot_fraction, hot_share=args.hot_share,
                         bandwidth=parse_size(args.bandwidth, "bandwidth"),
                         downtime_limit=args.downtime_limit, auto_converge=args.auto_converge,
                         **base)
        todo = [(args.workload, cfg)]
    else:
        todo = grid_configs(QemuConfig(**base), DEFAULT_GRID)
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(todo) + 1, desc="calibrating", file=sys.stderr)
    cells = []
    try:
        platform = calibrate(accel=args.accel)
        if bar:
            bar.update(1)
        for name, cfg in todo:
            if bar:
                bar.set_description(name)

            def on_sample(s, _bar=bar):
                if _bar:
                    _bar.set_postfix_str("%s %.1fs sync %d thr %d%%" % (
                        s["status"], s["t"], s["dirty_sync_count"], s["throttle"]))
            cells.append(run_cell(cfg, platform, on_sample=on_sample, name=name))
            if bar:
                bar.update(1)
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
    print_table(cells)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"platform": platform.as_dict(), "cells": cells}, f, indent=1)
    if args.plot:
        plot(cells, args.plot)
    return 0
