"""``pykvmdirty calibrate``: measure per-event kernel costs on the real
/dev/kvm and write them as a cost-model file the emulated backends load
(``CostModel.load(FILE)``)."""
import json
import sys


def register(sub):
    p = sub.add_parser(
        "calibrate", help="measure kernel costs on the real /dev/kvm; write a cost model",
        description="Measure on the real kernel: GET per GiB of slot, re-protect per dirty "
        "page, write fault per page, CLEAR per call, ring harvest/reset per entry and "
        "the ring-full exit; write them as a CostModel JSON file. Exits 1 with the reason "
        "where /dev/kvm is unusable.")
    p.add_argument("--out", metavar="FILE",
                   help="write the cost model here (default: print the JSON on stdout)")
    p.add_argument("--quick", action="store_true",
                   help="smaller slots and fewer repeats (a few seconds)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random page choice")
    p.set_defaults(func=run)


def run(args):
    from ..analysis.calibrate import KvmUnusable, calibrate, sources, summary

    log = sys.stdout if args.out else sys.stderr
    try:
        model, details = calibrate(quick=args.quick, seed=args.seed,
                                   progress=lambda s: print("measuring: %s" % s, file=log,
                                                            flush=True))
    except KvmUnusable as e:
        print("pykvmdirty calibrate: %s" % e, file=sys.stderr)
        return 1
    for line in summary(model, details):
        print(line, file=log)
    if args.out:
        model.save(args.out, sources(details))
        print("wrote %s (load with CostModel.load)" % args.out, file=log)
    else:
        json.dump(model.to_file_dict(sources(details)), sys.stdout, indent=1)
        print()
    return 0
