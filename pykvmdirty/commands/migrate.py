"""``pykvmdirty migrate``: run a pre-copy live migration of an emulated guest.

The defaults run as they are in a few seconds: a 2 GiB guest in 4 slots, a
hotspot workload at 20000 pages/s, 128 MiB/s, global sync, deterministic
virtual clock, in-process destination, verified page by page.
"""
import sys

from ..migration.config import MODES, ZERO_ACCOUNTING, parse_size
from ..migration.strategies import STRATEGIES
from ..migration.errors import MigrationError
from ..migration.run import migrate
from ..errors import SinkError
from ..bindings.constants import BACKENDS
from ..bindings.workload import KINDS


def register(sub):
    p = sub.add_parser("migrate", help="pre-copy live migration of an emulated guest",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--guest-size", default="2GiB", help="guest memory (default 2GiB)")
    p.add_argument("--slots", type=int, default=4, help="memslots (default 4)")
    p.add_argument("--backend", default="flat", choices=list(BACKENDS))
    p.add_argument("--strategy", default="global", choices=list(STRATEGIES),
                   help="dirty-log sync strategy (default global)")
    p.add_argument("--clear-shift", type=int, default=18,
                   help="chunked-clear: 2^shift pages per CLEAR, 6..31 (default 18)")
    p.add_argument("--workload", default="hotspot", choices=list(KINDS))
    p.add_argument("--rate", type=float, default=20000, help="guest writes, pages/s")
    p.add_argument("--hot-fraction", type=float, default=0.05)
    p.add_argument("--hot-share", type=float, default=0.9)
    p.add_argument("--zipf-s", type=float, default=1.0)
    p.add_argument("--trace", help="replay a trace file (.npz) instead of a generator")
    p.add_argument("--record", metavar="FILE", help="record the run's writes as a trace")
    p.add_argument("--mode", default="virtual", choices=list(MODES),
                   help="virtual: deterministic clock; realtime: C writer threads")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--bandwidth", default="128MiB",
                   help="rate limit per second, e.g. 128MiB; 0 = unlimited")
    p.add_argument("--link-bandwidth", default="1250MB",
                   help="virtual mode: link speed per second (default 1250MB = 10 Gbit/s)")
    p.add_argument("--downtime-limit", type=float, default=0.3, help="seconds (default 0.3)")
    p.add_argument("--max-wait", type=float, default=0.05,
                   help="time cap of one send iteration, seconds (default 0.05)")
    p.add_argument("--max-passes", type=int, default=30)
    p.add_argument("--auto-converge", action="store_true",
                   help="throttle the guest 20%%, +10%% per trigger")
    p.add_argument("--zero-pages", default="header", choices=list(ZERO_ACCOUNTING),
                   help="rate-limit a zero page as its header bytes or as a full page")
    p.add_argument("--populate", type=float, default=0.25,
                   help="fraction of pages written before migration (default 0.25)")
    p.add_argument("--fill", default="version", choices=["version", "random"])
    p.add_argument("--sink", default="local",
                   help="local (in-process destination), null, or tcp://HOST:PORT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=float, default=0.01,
                   help="virtual mode: workload interval, seconds (default 0.01)")
    p.add_argument("--cost-model", metavar="FILE",
                   help="virtual clock prices: a cost-model file (written by `pykvmdirty "
                   "calibrate`, or {field: ns}); default: the package's measured defaults")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG of per-pass dirty/sent/latency")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _size(text, name):
    if isinstance(text, str) and text.strip() in ("0", "none", "unlimited"):
        return 0
    v = parse_size(text, name)
    if v < 0:
        raise ValueError("%s must not be negative, got %r" % (name, text))
    return v


def _bw(text, name):
    t = text.strip().lower() if isinstance(text, str) else text
    if isinstance(t, str) and t.endswith("mb") and not t.endswith("mib"):
        return int(float(t[:-2]) * 1e6)
    if isinstance(t, str) and t.endswith("gb") and not t.endswith("gib"):
        return int(float(t[:-2]) * 1e9)
    if isinstance(t, str) and t.startswith("-"):
        raise ValueError("%s must not be negative, got %r" % (name, text))
    return _size(text, name)


def run(args):
    try:
        report = migrate(
            guest_size=args.guest_size, slots=args.slots, backend=args.backend,
            strategy=args.strategy, clear_shift=args.clear_shift, workload=args.workload,
            rate=args.rate, hot_fraction=args.hot_fraction, hot_share=args.hot_share,
            zipf_s=args.zipf_s, trace=args.trace, record=args.record, mode=args.mode,
            vcpus=args.vcpus, bandwidth=_bw(args.bandwidth, "--bandwidth"),
            link_bandwidth=_bw(args.link_bandwidth, "--link-bandwidth"),
            downtime_limit=args.downtime_limit, max_wait=args.max_wait,
            max_passes=args.max_passes, auto_converge=args.auto_converge,
            zero_pages=args.zero_pages, populate=args.populate, fill=args.fill,
            sink=args.sink, seed=args.seed, step=args.step, cost_model=args.cost_model,
            progress=None if args.quiet else True)
    except (MigrationError, SinkError) as e:
        print("pykvmdirty migrate: failed: %s" % e, file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        report.to_json(args.json)
        print("report written to %s" % args.json)
    if args.plot:
        report.plot(args.plot)
        print("plot written to %s" % args.plot)
    return 0 if report.verified in (True, None) else 1
