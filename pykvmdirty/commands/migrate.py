"""``pykvmdirty migrate``: run a pre-copy live migration of an emulated guest.

The defaults run as they are in a few seconds: a 2 GiB guest in 4 slots, a
hotspot workload at 20000 pages/s, 128 MiB/s, global sync, deterministic
virtual clock, in-process destination, verified page by page.
"""
import sys

from ..migration.config import EXIT_SERVICE_S, MODES, PAGE_CHOICES, ZERO_ACCOUNTING
from ..migration.strategies import STRATEGIES
from ..migration.errors import MigrationError
from ..migration.loop_placement import LOOP_THREADS
from ..migration.policy import DEFAULT_POLICY, POLICIES
from ..migration.placements import migrate_both_placements
from ..migration.run import migrate
from ..errors import SinkError
from ..migration.sinks import TcpSink
from ..migration.tcp_protocol import read_secret_file
from ..bindings.constants import BACKENDS
from ..bindings.workload import KINDS
from ..units import RATE_HELP, SIZE_HELP
from ._args import (add_max_memory, check_output_paths, check_plot_available, finite_float,
                    write_output)


def register(sub):
    p = sub.add_parser("migrate", help="pre-copy live migration of an emulated guest",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--guest-size", default="2GiB", metavar="SIZE",
                   help="guest memory: a size (%s); default %%(default)s" % SIZE_HELP)
    p.add_argument("--slots", type=int, default=4, help="memslots (default 4)")
    p.add_argument("--backend", default="flat", choices=list(BACKENDS),
                   help="dirty-log interface (default %(default)s)")
    p.add_argument("--strategy", default="global", choices=list(STRATEGIES),
                   help="dirty-log sync strategy (default global)")
    p.add_argument("--clear-shift", type=int, default=18,
                   help="chunked-clear: 2^shift pages per CLEAR, 6..31 (default 18)")
    p.add_argument("--workload", default="hotspot", choices=list(KINDS),
                   help="what the guest writes (default %(default)s)")
    p.add_argument("--rate", type=finite_float, default=20000,
                   help="guest writes, pages/s (default %(default)s)")
    p.add_argument("--hot-fraction", type=finite_float, default=0.05,
                   help="hotspot: share of the guest's pages that are hot (default "
                   "%(default)s)")
    p.add_argument("--hot-share", type=finite_float, default=0.9,
                   help="hotspot: share of the writes that go to the hot pages (default "
                   "%(default)s)")
    p.add_argument("--zipf-s", type=finite_float, default=1.0,
                   help="zipf: the exponent (default %(default)s)")
    p.add_argument("--trace", help="replay a trace file (.npz) instead of a generator")
    p.add_argument("--record", metavar="FILE", help="record the run's writes as a trace")
    p.add_argument("--mode", default="virtual", choices=list(MODES),
                   help="virtual: deterministic clock; realtime: C writer threads "
                   "(default %(default)s)")
    p.add_argument("--vcpus", type=int, default=2,
                   help="vCPUs writing (realtime: one writer thread each; default "
                   "%(default)s)")
    p.add_argument("--ring-entries", type=int, default=4096, metavar="N",
                   help="dirty-ring entries per vCPU (ring backend, and kvm with --strategy "
                   "ring); a power of two in 256..65536 (default %(default)s)")
    p.add_argument("--bandwidth", default="128MiB", metavar="RATE",
                   help="rate limit: %s; 0, none or unlimited = no limit (default "
                   "%%(default)s)" % RATE_HELP)
    p.add_argument("--link-bandwidth", default="1250MB", metavar="RATE",
                   help="virtual mode: link speed, a rate like --bandwidth (default "
                   "%(default)s = 10Gbit)")
    p.add_argument("--downtime-limit", type=finite_float, default=0.3, help="seconds (default 0.3)")
    p.add_argument("--max-wait", type=finite_float, default=0.05,
                   help="time cap of one send iteration, seconds (default 0.05)")
    p.add_argument("--max-passes", type=int, default=30,
                   help="passes: switch over after this many passes; qemu-7.2: give up "
                   "(status timeout) after this many syncs (QEMU itself never gives up); "
                   "default 30")
    p.add_argument("--auto-converge", action="store_true",
                   help="throttle the guest 20%%, +10%% per trigger")
    p.add_argument("--zero-pages", default="header", choices=list(ZERO_ACCOUNTING),
                   help="rate-limit a zero page as its header bytes or as a full page "
                   "(default %(default)s)")
    p.add_argument("--populate", type=finite_float, default=0.25,
                   help="fraction of pages written before migration (default 0.25)")
    p.add_argument("--fill", default="version", choices=["version", "random"],
                   help="what populated pages hold: a version number, or random bytes "
                   "(default %(default)s)")
    p.add_argument("--pages", default="auto", choices=list(PAGE_CHOICES),
                   help="how guest pages are kept: contents (4 KiB of memory each), versions "
                   "(a 64-bit version per page: same figures, memory only for the pages "
                   "written; local or null sink) or auto (versions above 64 GiB with a "
                   "local or null sink); default %(default)s")
    p.add_argument("--sink", default="local",
                   help="local (in-process destination), null, or tcp://HOST:PORT "
                   "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the workload's page choice (default %(default)s)")
    p.add_argument("--step", type=finite_float, default=0.01,
                   help="virtual mode: workload interval, seconds (default 0.01)")
    p.add_argument("--cost-model", metavar="FILE",
                   help="virtual clock prices: a cost-model file (written by `pykvmdirty "
                   "calibrate`, or {field: ns}); default: the package's measured defaults")
    p.add_argument("--loop-thread", default="migration-thread",
                   help="where the loop runs: iothread holds the global lock for each "
                        "iteration (QEMU 2010), migration-thread only for the sync; both: "
                        "one run per placement with the same settings, side by side "
                        "(needs --exit-rate); default %(default)s")
    p.add_argument("--exit-rate", type=float, default=0,
                   help="guest exits per second per vCPU that take the global lock "
                        "(0: none; e.g. 1000, assumed)")
    p.add_argument("--exit-service", type=float, default=EXIT_SERVICE_S,
                   help="seconds the lock is held per exit (default 10e-6, assumed)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG of per-pass dirty/sent/latency")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    add_max_memory(p, "a migration")
    p.add_argument("--secret-file", metavar="FILE",
                   help="with --sink tcp://: prove this shared secret to the receiver "
                   "(pykvmdirty receive --secret-file with the same file)")
    p.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICIES,
                   help="when to sync, switch over and throttle: qemu-7.2 (QEMU 7.2's "
                   "rules) or passes (sync per pass, switch when pending / last pass's "
                   "bandwidth fits the downtime limit); default %(default)s")
    p.set_defaults(func=run)


def check_loop_thread(args):
    """ValueError (one CLI line) for a bad --loop-thread or what `both` cannot do."""
    lt = args.loop_thread
    if lt not in LOOP_THREADS + ("both",):
        raise ValueError("--loop-thread must be one of %s, got %r"
                         % (", ".join(LOOP_THREADS + ("both",)), lt))
    if lt != "both":
        return
    if not args.exit_rate > 0:
        raise ValueError("--loop-thread both compares the guest's exits on the lock: give "
                         "--exit-rate > 0 (got %r)" % args.exit_rate)
    for opt, value in (("--plot", args.plot),
                       ("--record", args.record), ("--secret-file", args.secret_file)):
        if value:
            raise ValueError("--loop-thread both runs two migrations and cannot take %s; "
                             "run each placement on its own for it" % opt)
    if args.sink not in ("local", "null"):
        raise ValueError("--loop-thread both runs two migrations: --sink must be local or "
                         "null, got %r" % args.sink)


def progress_wanted(args):
    """A progress bar (\\r lines) only on a terminal, as compare does: never
    into a log file or a pipe."""
    return True if not args.quiet and sys.stderr.isatty() else None


def run(args):
    check_loop_thread(args)
    check_output_paths(args, ("--json", "--plot", "--record"))
    check_plot_available(args.plot)
    sink = args.sink
    if args.secret_file:
        if not sink.startswith("tcp://"):
            raise ValueError("--secret-file needs --sink tcp://HOST:PORT, got %r" % sink)
        sink = TcpSink(sink[len("tcp://"):], secret=read_secret_file(args.secret_file,
                                                                      "--secret-file"))
    both = args.loop_thread == "both"
    try:
        report = (migrate_both_placements if both else migrate)(
            guest_size=args.guest_size, slots=args.slots, backend=args.backend,
            strategy=args.strategy, clear_shift=args.clear_shift, workload=args.workload,
            rate=args.rate, hot_fraction=args.hot_fraction, hot_share=args.hot_share,
            zipf_s=args.zipf_s, trace=args.trace, record=args.record, mode=args.mode,
            vcpus=args.vcpus, bandwidth=args.bandwidth, link_bandwidth=args.link_bandwidth,
            ring_entries=args.ring_entries,
            downtime_limit=args.downtime_limit, max_wait=args.max_wait,
            max_passes=args.max_passes, auto_converge=args.auto_converge, policy=args.policy,
            zero_pages=args.zero_pages, populate=args.populate, fill=args.fill,
            pages=args.pages,
            sink=sink, seed=args.seed, step=args.step, cost_model=args.cost_model,
            **({} if both else dict(loop_thread=args.loop_thread)), exit_rate=args.exit_rate,
            exit_service=args.exit_service,
            progress=progress_wanted(args), max_memory=args.max_memory)
    except (MigrationError, SinkError) as e:
        print("pykvmdirty migrate: failed: %s" % e, file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        write_output("--json", args.json, report.to_json() + "\n")
        print("report written to %s" % args.json)
    if args.plot:
        write_output("--plot", args.plot, report.plot())
        print("plot written to %s" % args.plot)
    return 0 if report.verified in (True, None) else 1
