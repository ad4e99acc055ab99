"""``pykvmdirty receive``: the TCP destination of ``pykvmdirty migrate --sink tcp://...``.

Listens, rebuilds guest memory from migration streams (several senders at
once), sends each its page hashes back so it verifies them, and reports what
it holds. Meant for trusted networks: a stream's memory claim, time and
connections are bounded, and --secret-file makes senders prove a shared
secret, but the stream is not encrypted. Exit status 1 if a stream failed.
"""
import json
import sys
import threading

from ..migration import receiver as rxm
from ..units import parse_size
from ..migration.tcp_protocol import read_secret_file
from ._args import add_max_memory, finite_float


def register(sub):
    p = sub.add_parser("receive", help="TCP migration destination",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--listen", default="127.0.0.1:4444", help="HOST:PORT (default "
                   "127.0.0.1:4444; port 0 picks a free one)")
    p.add_argument("--count", type=int, default=1,
                   help="streams to accept, then exit (default 1; 0 = serve until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print each result as JSON")
    p.add_argument("--prefault", default="0", metavar="SIZE",
                   help="populate destination memory this far ahead of dense writes in a "
                   "helper thread, e.g. 64MiB (default 0 = off; helps where a core is idle)")
    add_max_memory(p, "a stream (all connections together)")
    p.add_argument("--idle-timeout", type=finite_float, default=rxm.DEFAULT_IDLE_TIMEOUT,
                   metavar="SECONDS", help="drop a sender silent this long (default %g)"
                   % rxm.DEFAULT_IDLE_TIMEOUT)
    p.add_argument("--total-timeout", type=finite_float, default=rxm.DEFAULT_TOTAL_TIMEOUT,
                   metavar="SECONDS", help="drop a migration that takes longer (default %g)"
                   % rxm.DEFAULT_TOTAL_TIMEOUT)
    p.add_argument("--max-connections", type=int, default=rxm.DEFAULT_MAX_CONNECTIONS,
                   metavar="N", help="senders served at once; more are told busy "
                   "(default %d)" % rxm.DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--secret-file", metavar="FILE",
                   help="require senders to prove this shared secret (HMAC-SHA256 "
                   "challenge; pykvmdirty migrate --secret-file with the same file)")
    p.set_defaults(func=run)


def _print_result(res, as_json, lock):
    with lock:
        if as_json:
            print(json.dumps(res.as_dict()), flush=True)
        elif res.ok:
            st = res.stats
            print("received from %s: %d batches, %d pages + %d zero pages, %.1f MiB in "
                  "%.2f s (%.2f GB/s), guest %d MiB in %d regions; hashes sent back" % (
                      res.peer, st["batches"], st["pages"], st["zero_pages"],
                      st["bytes"] / 2**20, res.seconds,
                      st["bytes"] / res.seconds / 1e9 if res.seconds else 0,
                      st["guest_bytes"] >> 20, st["regions"]), flush=True)
        else:
            print("stream from %s FAILED: %s" % (res.peer, res.error), file=sys.stderr,
                  flush=True)


def run(args):
    if args.count < 0:
        raise ValueError("--count must be >= 0, got %d" % args.count)
    prefault = parse_size(args.prefault, "--prefault")
    secret = read_secret_file(args.secret_file, "--secret-file") if args.secret_file else None
    lock = threading.Lock()
    with rxm.Receiver(args.listen, prefault=prefault, max_memory=args.max_memory,
                      idle_timeout=args.idle_timeout, total_timeout=args.total_timeout,
                      max_connections=args.max_connections, secret=secret) as rx:
        print("listening on %s:%d" % (rx.host, rx.port), flush=True)
        print("limits: memory %s, %d connections at once, idle %g s, total %g s%s"
              % (rx.limit_how, rx.max_connections, rx.idle_timeout, rx.total_timeout,
                 "; shared secret required" if secret else ""), file=sys.stderr, flush=True)
        results = rx.serve(args.count or None,
                           on_result=lambda r: _print_result(r, args.json, lock))
    return 0 if all(r.ok for r in results) else 1
