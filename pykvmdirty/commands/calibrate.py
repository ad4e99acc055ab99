"""``pykvmdirty calibrate``: measure per-event kernel costs on the real
/dev/kvm and write them as a cost-model file the emulated backends load
(``CostModel.load(FILE)``); with ``--qemu``, run the QEMU calibration cells
(pykvmdirty/qemu/calibration.py) and write the file ``pykvmdirty qemu
--calibration`` predicts from."""
import json
import sys

from ._args import check_output_paths


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
    p.add_argument("--qemu", action="store_true",
                   help="instead: run the QEMU 7.2 calibration cells (an idle and three a-b "
                   "guests, about 40 s) and write the platform costs `pykvmdirty qemu "
                   "--calibration FILE` predicts from, each with its source")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="--qemu: QEMU's accelerator (auto: KVM if the guest runs under it)")
    p.set_defaults(func=run)


def run_qemu(args):
    from ..qemu.calibration import calibrate_qemu
    from ..qemu.errors import QemuError

    try:
        check_output_paths(args, ("--out",))
    except ValueError as e:
        print("pykvmdirty calibrate: error: %s" % e, file=sys.stderr)
        return 2
    log = sys.stdout if args.out else sys.stderr
    try:
        cal = calibrate_qemu(accel=args.accel,
                             on_progress=lambda s: print(s, file=log, flush=True))
    except (QemuError, ValueError) as e:
        print("pykvmdirty calibrate: %s" % e, file=sys.stderr)
        return 1
    print("QEMU calibration on %s, %s, %s, %s:" % (cal.machine, cal.accel.upper(),
                                                    cal.qemu_version, cal.date), file=log)
    for line in cal.lines():
        print("  " + line, file=log)
    assumed = [k for k in cal.sources if cal.assumed(k)]
    if assumed:
        print("assumed, not measured: %s" % ", ".join(assumed), file=log)
    if args.out:
        cal.save(args.out)
        print("wrote %s (pykvmdirty qemu --calibration %s)" % (args.out, args.out), file=log)
    else:
        json.dump(cal.to_file_dict(), sys.stdout, indent=1)
        print()
    return 0


def run(args):
    from ..analysis.calibrate import KvmUnusable, calibrate, sources, summary

    if args.qemu:
        return run_qemu(args)
    check_output_paths(args, ("--out",))
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
