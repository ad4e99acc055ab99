"""``pykvmdirty receive``: the TCP destination of ``pykvmdirty migrate --sink tcp://...``.

Listens, rebuilds guest memory from one migration stream, sends its page
hashes back so the sender verifies it, and reports what it holds. Exit
status 1 if the stream was truncated or corrupt.
"""
import json
import sys

from ..migration.receiver import Receiver


def register(sub):
    p = sub.add_parser("receive", help="TCP migration destination",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--listen", default="127.0.0.1:4444", help="HOST:PORT (default "
                   "127.0.0.1:4444; port 0 picks a free one)")
    p.add_argument("--count", type=int, default=1, help="streams to accept (default 1)")
    p.add_argument("--json", action="store_true", help="print each result as JSON")
    p.add_argument("--prefault", default="0", metavar="SIZE",
                   help="populate destination memory this far ahead of dense writes in a "
                   "helper thread, e.g. 64MiB (default 0 = off; helps where a core is idle)")
    p.set_defaults(func=run)


def run(args):
    if args.count < 1:
        raise ValueError("--count must be at least 1, got %d" % args.count)
    from ..migration.config import parse_size
    prefault = parse_size(args.prefault, "--prefault")
    status = 0
    with Receiver(args.listen, prefault=prefault) as rx:
        print("listening on %s:%d" % (rx.host, rx.port), flush=True)
        for _ in range(args.count):
            res = rx.serve_one()
            if args.json:
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
                status = 1
    return status
