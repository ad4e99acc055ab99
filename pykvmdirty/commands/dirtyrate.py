"""``pykvmdirty dirtyrate``: a guest's dirty rate measured the three ways QEMU
7.2's calc-dirty-rate measures it (page sampling, dirty bitmap, dirty ring),
on the emulator next to the true dirty set of a known workload, or (--qemu)
by QEMU itself on the firmware guest next to the emulator's estimate of the
same pages, or (--linux WORKLOAD) by QEMU's page sampling on the Linux guest
next to the whole-RAM snapshot diff its workload model is built from."""
import json

from ..bindings.constants import BACKENDS, RING_BACKENDS, RING_MAX_ENTRIES
from ..bindings.constants import WORKLOAD_KINDS as KINDS
from ..migration import dirtyrate as emu
from ..migration.workloads import WorkloadSpec
from ._args import check_output_paths, finite_float, size_arg, write_output

GIB = 1 << 30
MAX_GUEST = 64 * GIB


def _times(text):
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError("--calc-time takes seconds separated by commas, got %r"
                             % text) from None
    return out


def register(sub):
    p = sub.add_parser("dirtyrate", help="dirty rate by page sampling, dirty bitmap and dirty "
                       "ring (QEMU's calc-dirty-rate) against the true dirty set")
    p.add_argument("--workload", default="uniform", choices=[k for k in KINDS if k != "idle"],
                   help="the guest's writes (default uniform; --qemu: uniform or hotspot)")
    p.add_argument("--rate", type=finite_float, default=None,
                   help="page writes per second (default 200000; --qemu 50000)")
    p.add_argument("--guest-size", type=size_arg("--guest-size", positive=True), default=GIB,
                   metavar="SIZE", help="guest memory (default 1GiB)")
    p.add_argument("--hot-fraction", type=finite_float, default=0.05)
    p.add_argument("--hot-share", type=finite_float, default=0.9)
    p.add_argument("--seed", type=int, default=1, help="the workload's seed")
    p.add_argument("--calc-time", type=str, default=None, metavar="S[,S...]",
                   help="window lengths in seconds, one measurement each (default "
                   "0.25,0.5,1,2,4; --qemu: whole seconds 1..60, default 1,2,4)")
    p.add_argument("--sample-pages", type=int, default=emu.DEFAULT_SAMPLE_PAGES,
                   help="page sampling: pages per GiB, 128..4096 (default 512, QEMU's)")
    p.add_argument("--methods", default=",".join(emu.METHODS),
                   help="comma-separated: page-sampling, dirty-bitmap, dirty-ring (default all)")
    p.add_argument("--backend", default="flat",
                   choices=[b for b in BACKENDS if b not in RING_BACKENDS and b != "uffd"],
                   help="the dirty-bitmap method's log (default flat)")
    p.add_argument("--ring-entries", type=int, default=4096,
                   help="dirty-ring entries per vCPU (default 4096, QEMU's runner's; "
                   "at most %d)" % RING_MAX_ENTRIES)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--qemu", action="store_true",
                   help="measure the firmware guest with QEMU's own calc-dirty-rate, "
                   "side by side with the emulator's estimate of the same pages")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="--qemu: the accelerator (auto: KVM, else TCG)")
    p.add_argument("--linux", default=None, metavar="WORKLOAD",
                   help="QEMU's page sampling (at --sample-pages and 4096 per GiB) on the "
                   "Linux guest running WORKLOAD (TCG), next to the snapshot diff of the "
                   "same window; --calc-time whole seconds, default 1,2")
    p.add_argument("--model", default=None, metavar="FILE",
                   help="--linux: a workload model (pykvmdirty qemu --guest linux) of the "
                   "same workload: its rate for each window beside")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=run)


def _check_common(args):
    if args.guest_size > MAX_GUEST:
        raise ValueError("--guest-size must be at most 64GiB here, got %d bytes"
                         % args.guest_size)
    if not 1 <= args.vcpus <= 32:
        raise ValueError("--vcpus must be in [1, 32], got %d" % args.vcpus)
    if not 64 <= args.ring_entries <= RING_MAX_ENTRIES or args.ring_entries & (
            args.ring_entries - 1):
        raise ValueError("--ring-entries must be a power of two in [64, %d], got %d"
                         % (RING_MAX_ENTRIES, args.ring_entries))
    emu.check_sample_pages(args.sample_pages)
    return emu.check_methods([m.strip() for m in args.methods.split(",") if m.strip()])


def run(args):
    methods = _check_common(args)
    check_output_paths(args, ["--json"])
    if args.linux:
        return run_linux(args)
    if args.qemu:
        return run_qemu(args, methods)
    times = [emu.check_calc_time(t) for t in _times(args.calc_time or "0.25,0.5,1,2,4")]
    spec = WorkloadSpec(args.workload, 200000 if args.rate is None else args.rate, args.seed,
                        args.hot_fraction, args.hot_share)
    windows = emu.measure(spec, args.guest_size, times, methods, backend=args.backend,
                          vcpus=args.vcpus, ring_entries=args.ring_entries,
                          sample_pages=args.sample_pages)
    print("emulator: %s at %d writes/s, %s guest, %d vCPU(s); page sampling %d pages/GiB; "
          "dirty ring %d entries, reaped when full and every %g s (QEMU's reaper)"
          % (spec.kind, spec.rate, _gib(args.guest_size), args.vcpus, args.sample_pages,
             args.ring_entries, emu.REAP_INTERVAL))
    head = "%8s %9s %10s %9s" % ("window s", "writes", "true pages", "true MiB/s")
    for m in methods:
        head += " %24s" % m
    print(head)
    for w in windows:
        line = "%8g %9d %10d %9.1f" % (w.calc_time, w.writes, w.true_pages,
                                       w.true_pages / w.calc_time / emu.PAGES_PER_MIB)
        for m in methods:
            e = w.estimates[m]
            cell = "%.1f (%+.1f%%)" % (e.mib_per_s, 100 * w.error(m))
            if m == "page-sampling":
                cell += " ±%.0f%%" % (200 * e.detail["stderr_pages"] / max(1, w.true_pages))
            line += " %24s" % cell
        print(line)
    if "dirty-ring" in methods:
        print("dirty ring against what it counts (distinct pages per reap epoch): %s"
              % ", ".join("%g s %+.1f%%" % (w.calc_time, 100 * (
                  w.estimates["dirty-ring"].dirty_pages / max(1, w.ring_true_entries or 0) - 1))
                          for w in windows))
    if "page-sampling" in methods:
        print("page sampling: ± is 2 sigma of its binomial (dirty samples of n), relative to "
              "the truth")
    if args.json:
        write_output("--json", args.json, json.dumps(dict(
            workload=spec.as_dict(), guest_size=args.guest_size, methods=methods,
            sample_pages=args.sample_pages, ring_entries=args.ring_entries, vcpus=args.vcpus,
            windows=[w.as_dict() for w in windows]), indent=1) + "\n")
    return 0


def run_linux(args):
    from ..migration.trace import load as load_trace
    from ..qemu import dirtyrate as qd
    from ..qemu.config import QemuConfig
    from ..qemu.linux import dirtyrate as ld
    from ..qemu.linux.workloads import check
    check(args.linux)
    times = _times(args.calc_time or "1,2")
    for t in times:
        qd.check_qmp_args("page-sampling", t, args.sample_pages)
    meta = load_trace(args.model).meta if args.model else None
    cfg = QemuConfig(guest="linux", workload=args.linux, guest_size=args.guest_size,
                     accel="tcg")
    samples = sorted({args.sample_pages, 4096})
    rows = ld.side_by_side(cfg, [int(t) for t in times], samples, model_meta=meta)
    print("Linux guest (%s, %s, TCG): QEMU's calc-dirty-rate page-sampling (MiB/s, +- its "
          "2 sigma) against the snapshot diff of the same window length (MiB/s)%s"
          % (args.linux, _gib(args.guest_size), "; the model's working set over the window"
             if meta else ""))
    for r in rows:
        q = "  ".join("%d/GiB %d +-%.0f" % (int(n), v["mib_s"], v["two_sigma_mib_s"])
                      for n, v in sorted(r["qemu"].items(), key=lambda kv: int(kv[0])))
        print("round %d  %d s  QEMU %s  snapshot %.1f (%d pages in %.3f s)%s  load %.2f"
              % (r["round"], r["calc_time"], q, r["snapshot_mib_s"], r["snapshot_pages"],
                 r["snapshot_window_s"], "" if r.get("model_mib_s") is None else
                 "  model %.1f" % r["model_mib_s"], r["loadavg"]))
    if args.json:
        write_output("--json", args.json, json.dumps(dict(
            workload=args.linux, guest_size=args.guest_size, model=args.model, rows=rows),
            indent=1) + "\n")
    return 0


def _gib(n):
    return "%g GiB" % (n / GIB)


def run_qemu(args, methods):
    from ..qemu import dirtyrate as qd
    from ..qemu.config import QemuConfig
    if args.workload not in ("uniform", "hotspot"):
        raise ValueError("--workload must be uniform or hotspot with --qemu (the firmware "
                         "guest's random workloads), got %r" % args.workload)
    times = _times(args.calc_time or "1,2,4")
    for t in times:
        qd.check_qmp_args("page-sampling", t)
    rate = 50000 if args.rate is None else args.rate
    if rate != int(rate) or rate <= 0:
        raise ValueError("--rate must be a whole number of pages/s > 0 with --qemu, got %r"
                         % rate)
    if args.vcpus != 1:
        raise ValueError("--vcpus must be 1 with --qemu (the firmware guest has one vCPU)")
    if args.guest_size > 3 * GIB:
        raise ValueError("--guest-size must be at most 3GiB with --qemu (the firmware guest "
                         "writes below 3 GiB), got %d bytes" % args.guest_size)
    cfg = QemuConfig(guest_size=args.guest_size, workload=args.workload, start=1 << 20,
                     end=args.guest_size, rate=int(rate), hot_fraction=args.hot_fraction,
                     hot_share=args.hot_share, seed=args.seed, accel=args.accel)
    measured = qd.measure_firmware_guest(cfg, methods, times, args.sample_pages)
    rows = qd.side_by_side(cfg, measured, args.sample_pages)
    print("QEMU calc-dirty-rate on the firmware guest: %s at %d pages/s over [1 MiB, %s), "
          "%s; page sampling %d pages/GiB%s" % (
              args.workload, rate, _gib(args.guest_size), measured["accel"] or "-",
              args.sample_pages,
              ("; " + measured["accel_note"]) if measured["accel_note"] else ""))
    print("%-14s %-22s %6s %12s %11s %14s %10s" % (
        "mode", "accel", "calc s", "guest pg/s", "QEMU MiB/s", "emulator MiB/s",
        "true MiB/s"))
    for r in rows:
        print("%-14s %-22s %6d %12.0f %11d %14.1f %10.1f" % (
            r["mode"], r["accel"], r["calc_time"], r["guest_rate"], r["qemu_mib_s"],
            r["emulator_mib_s"], r["true_mib_s"]))
    for mode, why in measured["skipped"].items():
        print("%s: not measured: %s" % (mode, why))
    print("true = distinct pages among the guest's own draws in calc s at its measured rate "
          "(QEMU prints whole MiB/s)")
    if args.json:
        write_output("--json", args.json, json.dumps(dict(
            config=cfg.as_dict(), sample_pages=args.sample_pages, measured=measured, rows=rows),
            indent=1, default=str) + "\n")
    return 0
