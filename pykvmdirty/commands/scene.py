"""``pykvmdirty scene``: the scene this project started from, end to end.

A 512 GiB guest (or a 12-24 TiB one, in several memslots) migrated under
QEMU 7.2's rules, on every emulated backend and sync strategy: per run the
syncs, the guest time and downtime, how much of the migration went to
collecting and scanning the dirty log against sending pages, the peak
resident memory against its estimate, and how many guest seconds one wall
second simulates. The seed's own figures are printed first: the bitmap
(1 bit per page) and the byte map (1 byte per page) walked on every pass.
Guest pages are kept as versions (the content-free model: same figures as
real contents, memory only for the pages written).
"""
import concurrent.futures
import json
import multiprocessing
import time

from .. import limits
from ..bindings.constants import EMULATED_BACKENDS, PAGE_SIZE
from ..migration.config import MigrationConfig
from ..migration.errors import MigrationError
from ..migration.run import memory_estimate, migrate
from ..migration.strategies import STRATEGIES, strategy_class
from ..qemu.process import die_with_parent
from ..units import format_bytes, parse_size
from ._args import add_max_memory, check_output_paths, finite_float, positive_int, write_output

NS = 1e9


def register(sub):
    p = sub.add_parser("scene", help="the seed's scene: a 512 GiB (to 24 TiB) guest migrated "
                       "on every backend and sync strategy",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--guest-size", default="512GiB", metavar="SIZE",
                   help="guest size (default 512GiB; e.g. 12TiB, 24TiB)")
    p.add_argument("--slots", type=positive_int, default=8, help="memslots (default 8)")
    p.add_argument("--backends", default=",".join(b for b in EMULATED_BACKENDS),
                   help="comma-separated emulated backends (default: all)")
    p.add_argument("--strategies", default="global,per-slot,chunked-clear,ring",
                   help="comma-separated sync strategies; each runs on the backends it "
                   "suits (default: all)")
    p.add_argument("--rate", type=finite_float, default=200000,
                   help="hotspot writes, pages/s (default 200000)")
    p.add_argument("--hot-fraction", type=finite_float, default=0.05,
                   help="each vCPU's hot set, share of the guest (default 0.05)")
    p.add_argument("--hot-share", type=finite_float, default=0.9,
                   help="share of the writes to the hot sets (default 0.9)")
    p.add_argument("--bandwidth", default="10GiB", metavar="RATE",
                   help="rate limit and link speed (default 10GiB per second)")
    p.add_argument("--populate", type=finite_float, default=0.0,
                   help="share of pages written before the migration (default 0)")
    p.add_argument("--pages", default="versions", choices=["versions", "contents", "auto"],
                   help="how guest pages are kept (default versions: see migrate --pages)")
    p.add_argument("--per-pass", action="store_true",
                   help="under each run, a line per pass: collect+scan against send")
    p.add_argument("--json", metavar="FILE", help="write every run's figures as JSON")
    add_max_memory(p, "each run")
    p.set_defaults(func=run)


def _list(value, name, choices):
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in choices]
    if not items or bad:
        raise ValueError("--%s: unknown %s; choose from %s"
                         % (name, ", ".join(map(repr, bad)) or "(empty)", ", ".join(choices)))
    return items


def cells(backends, strategies):
    """(backend, strategy) pairs where the strategy suits the backend."""
    out = []
    for b in backends:
        for s in strategies:
            try:
                strategy_class(s).check_backend(b)
            except ValueError:
                continue
            out.append((b, s))
    return out


def reset_peak_rss():
    """Start a new peak (VmHWM) for this process: /proc/self/clear_refs 5."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def in_child(cfg, max_memory):
    """one_run in a fresh process: its peak resident memory is the run's
    own, not what earlier runs left in this one."""
    ctx = multiprocessing.get_context("spawn")
    # the run dies with this process (killed, not just interrupted): no
    # orphan keeps gigabytes resident
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx,
                                                initializer=die_with_parent) as pool:
        return pool.submit(one_run, cfg, max_memory).result()


def one_run(cfg, max_memory):
    """Figures of one migration (dict), or why it was not run."""
    est = memory_estimate(cfg, "local")
    try:
        t0 = time.monotonic()
        reset_peak_rss()
        r = migrate(cfg, sink="local", max_memory=max_memory)
        wall = time.monotonic() - t0
    except limits.MemoryLimitError as e:
        return dict(refused=str(e), estimate=est.resident)
    except MigrationError as e:
        return dict(failed=str(e), estimate=est.resident)
    collect = sum(p.collect_ns + p.scan_ns for p in r.passes)
    send = sum(p.send_ns for p in r.passes)
    peak = peak_rss()
    return dict(status=r.status, verified=r.verified, syncs=r.dirty_sync_count,
                passes=r.npasses, total_s=r.total_ns / NS, downtime_ms=r.downtime_ns / 1e6,
                sent_bytes=r.bytes, collect_scan_s=collect / NS, send_s=send / NS,
                per_pass=[dict(kind=p.kind, collect_scan_ms=(p.collect_ns + p.scan_ns) / 1e6,
                               send_ms=p.send_ns / 1e6, dirty=p.dirty_found,
                               sent=p.pages_sent) for p in r.passes],
                wall_s=wall, guest_s_per_wall_s=r.total_ns / NS / wall if wall else None,
                peak_rss=peak, estimate=est.resident, estimate_ratio=est.resident / peak,
                pages=r.config.get("pages"))


def run(args):
    check_output_paths(args, ("--json",))
    backends = _list(args.backends, "backends", EMULATED_BACKENDS)
    strategies = _list(args.strategies, "strategies", STRATEGIES)
    guest = parse_size(args.guest_size, "--guest-size")
    npages = guest // PAGE_SIZE
    base = dict(guest_size=guest, slots=args.slots, workload="hotspot", rate=args.rate,
                hot_fraction=args.hot_fraction, hot_share=args.hot_share,
                bandwidth=args.bandwidth, link_bandwidth=args.bandwidth,
                populate=args.populate, policy="qemu-7.2", pages=args.pages)
    MigrationConfig(**base)  # every bad value named before the first run
    print("%s guest in %d slots: the seed's walk of every pass reads a %s bitmap "
          "(1 bit/page) or a %s byte map (1 byte/page)"
          % (format_bytes(guest), args.slots, format_bytes(npages // 8), format_bytes(npages)))
    print("hotspot %g pages/s (%g%% of the guest hot per vCPU, %g%% of the writes), %s/s, "
          "QEMU 7.2's rules" % (args.rate, 100 * args.hot_fraction, 100 * args.hot_share,
                                args.bandwidth))
    head = "%-9s %-13s %-9s %5s %9s %9s %11s %11s %7s %9s %9s %8s %10s" % (
        "backend", "strategy", "status", "syncs", "guest s", "down ms", "log s",
        "send s", "log %", "peak", "estimate", "est/peak", "guest s/s")
    print(head)
    results = []
    for backend, strategy in cells(backends, strategies):
        cfg = MigrationConfig(backend=backend, strategy=strategy, **base)
        res = in_child(cfg, args.max_memory)
        res.update(backend=backend, strategy=strategy)
        results.append(res)
        if "status" not in res:
            print("%-9s %-13s %s" % (backend, strategy, "not run: " + res.get(
                "refused", res.get("failed", ""))))
            continue
        share = res["collect_scan_s"] / max(1e-12, res["collect_scan_s"] + res["send_s"])
        print("%-9s %-13s %-9s %5d %9.2f %9.1f %11.4f %11.2f %6.2f%% %9s %9s %8.2f %10.1f%s" % (
            backend, strategy, res["status"], res["syncs"], res["total_s"],
            res["downtime_ms"], res["collect_scan_s"], res["send_s"], 100 * share,
            format_bytes(res["peak_rss"]), format_bytes(res["estimate"]),
            res["estimate_ratio"], res["guest_s_per_wall_s"],
            "" if res["verified"] else "  NOT VERIFIED"))
        if args.per_pass:
            for k, p in enumerate(res["per_pass"]):
                print("    pass %-3d %-13s dirty %10d  sent %10d  collect+scan %9.2f ms  "
                      "send %10.1f ms" % (k + 1, p["kind"], p["dirty"], p["sent"],
                                          p["collect_scan_ms"], p["send_ms"]))
    print("(log s: collecting + scanning the dirty log over the whole migration; send s: "
          "sending pages; peak: this process's peak resident memory during the run)")
    if args.json:
        write_output("--json", args.json, json.dumps(dict(
            guest_bytes=guest, slots=args.slots, config={k: str(v) for k, v in base.items()},
            bitmap_bytes=npages // 8, bytemap_bytes=npages, runs=results), indent=1) + "\n")
        print("figures written to %s" % args.json)
    return 0 if all(r.get("verified") in (True, None) for r in results if "status" in r) else 1
