"""``pykvmdirty qemu --guest linux``: the Linux guest's workload measured, one
calibration run, blind predictions written to disk, then the real runs.

Order, each step on disk before the next starts:

1. the workload model (model.py): measured now (``<json>.model-<workload>.npz``)
   or ``--model FILE``;
2. the Linux calibration (predict.py): one migration at unlimited bandwidth
   and 20 ms (its destination not verified: only its figures are used) over
   the base TCG calibration ``--calibration FILE``, saved as
   ``<json>.calibration-linux.json``; a second at 32 MiB/s, 20 ms,
   auto-converge (also unverified); the guest's speed while it is migrated,
   with the sender working and waiting (predict.guest_speed, from those two
   runs only), in the JSON's calibration record;
3. per cell of the Linux grid (:data:`LINUX_CELLS`, none of them the
   calibration's setting): the prediction into the JSON (fsynced), then
   ``--repeat`` QEMU runs, each with the host's load average; judged with
   the bands of qemu/compare.py.
"""
import dataclasses
import os
import sys
import time
from typing import Any, Dict, Tuple

from ..migration.trace import load as load_trace
from ..qemu.calibration import file_hash
from ..qemu.calibration import load as load_calibration
from ..qemu.compare import GridStore, now, run_record, summarise
from ..qemu.config import QemuConfig
from ..qemu.errors import QemuError
from ..qemu.linux import model as wl_model
from ..qemu.linux import predict as lp
from ..qemu.linux.runner import run_linux_migration as run_migration
from ..qemu.linux.workloads import check as check_workload
from ..units import GiB, MiB
from ._args import check_output_paths

DEFAULT_WORKLOAD = "vm-flip-16M"
DEFAULT_SIZE = 256 * MiB
DEFAULT_WARMUP = 3.0
#: the model's window: short enough that a stressor's sweep of its buffer is
#: not one step (200 ms windows saw the whole 16 MiB buffer change in each)
WINDOW_S = 0.05
#: the judged settings (the calibration runs: unlimited bandwidth, 20 ms;
#: 32 MiB/s, 20 ms, auto-converge)
LINUX_CELLS: Tuple[Dict[str, Any], ...] = (
    dict(name="128M/s 0.3s", bandwidth=128 * MiB),
    dict(name="64M/s 0.3s", bandwidth=64 * MiB),
    dict(name="256M/s 50ms", bandwidth=256 * MiB, downtime_limit=0.05),
    dict(name="1G/s 1s", bandwidth=GiB, downtime_limit=1.0),
    dict(name="48M/s 0.1s ac", bandwidth=48 * MiB, downtime_limit=0.1, auto_converge=True),
)


def _stem(path):
    return path[:-5] if path.endswith(".json") else path


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(args):
    """Every check before a QEMU runs: (base config, cells, base calibration)."""
    from ..qemu.linux.initramfs import LinuxGuestError, find_kernel
    workload = args.workload or DEFAULT_WORKLOAD
    check_workload(workload)
    if args.interface == "ring":
        raise ValueError("--guest linux runs under TCG here (a Linux kernel does not boot under "
                         "KVM on this host): --interface ring needs KVM")
    if args.calibrate:
        raise ValueError("--guest linux calibrates itself (one run over --calibration FILE, the "
                         "TCG calibration of this machine): drop --calibrate")
    if not args.calibration or len(args.calibration) != 1:
        raise ValueError("--guest linux needs one --calibration FILE: this machine's TCG "
                         "calibration (pykvmdirty calibrate --qemu --accel tcg --out FILE)")
    base = load_calibration(args.calibration[0])
    if base.accel != "tcg":
        raise ValueError("--calibration %s is a %s calibration; --guest linux runs under TCG"
                         % (args.calibration[0], base.accel.upper() or "unknown"))
    try:
        find_kernel(args.kernel or None)
    except LinuxGuestError as e:
        raise ValueError(str(e)) from None
    cfg = QemuConfig(guest="linux", workload=workload, kernel=args.kernel,
                     guest_size=args.guest_size or DEFAULT_SIZE,
                     accel="tcg" if args.accel == "auto" else args.accel,
                     timeout=args.timeout,
                     warmup=DEFAULT_WARMUP if args.warmup is None else args.warmup)
    if args.grid in (None, "linux"):
        cells = [("%s %s" % (workload, c["name"]),
                  dataclasses.replace(cfg, **{k: v for k, v in c.items() if k != "name"}))
                 for c in LINUX_CELLS]
    elif args.grid == "one":
        cells = [("%s one cell" % workload,
                  dataclasses.replace(cfg, bandwidth=args.bandwidth,
                                      downtime_limit=args.downtime_limit,
                                      auto_converge=args.auto_converge))]
    else:
        raise ValueError("--grid with --guest linux must be linux (default) or one, got %r"
                         % args.grid)
    check_output_paths(args, ("--json", "--plot"))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'pykvmdirty[plot]'") from None
    trace = None
    if args.model:
        trace = load_trace(args.model)
        if trace.npages != cfg.guest_size // 4096:
            raise ValueError("--model %s covers %d pages, the guest %d (--guest-size)"
                             % (args.model, trace.npages, cfg.guest_size // 4096))
    return cfg, cells, base, trace


def run(args, table_lines, goal_summary, plot):
    """The Linux flow; the report's helpers come from commands/qemu.py."""
    cfg, cells, base, trace = prepare(args)
    stem = _stem(args.json)
    try:
        model_path = args.model
        if trace is None:
            model_path = "%s.model-%s.npz" % (stem, cfg.workload)
            _log("measuring the workload model (%s, %d MiB, %d windows of %d ms)"
                 % (cfg.workload, cfg.guest_size >> 20, args.windows, WINDOW_S * 1000))
            trace = wl_model.measure(cfg, windows=args.windows, window_s=WINDOW_S,
                                     on_progress=lambda s: _log("  " + s))
            trace.save(model_path)
        _log("model %s: %s" % (model_path, wl_model.summary(trace)))
        cal_cfg = lp.calibration_config(cfg)
        _log("calibration run (unlimited bandwidth, %g ms)" % (cal_cfg.downtime_limit * 1000))
        started = now()
        res = run_migration(dataclasses.replace(cal_cfg, verify=False))
        rec = run_record(res)
        rec["started_at"], rec["loadavg"] = started, list(os.getloadavg())
        rec["downtime_bytes"] = res.downtime_bytes
        cal = lp.costs_from_run(rec, base, cal_cfg)
        cal_path = "%s.calibration-linux.json" % stem
        cal.save(cal_path)
        for line in cal.lines():
            _log("  " + line)
        idle_cfg = lp.idle_calibration_config(cfg)
        _log("second calibration run (%.0f MiB/s, %g ms, auto-converge)"
             % (idle_cfg.bandwidth / MiB, idle_cfg.downtime_limit * 1000))
        started = now()
        idle_rec = run_record(run_migration(dataclasses.replace(idle_cfg, verify=False)))
        idle_rec["started_at"], idle_rec["loadavg"] = started, list(os.getloadavg())
        speed = lp.guest_speed(rec, cal, cal_cfg, trace, idle_rec, idle_cfg)
        speed["run"], speed["idle_run"] = rec, idle_rec
        _log("  guest speed while migrated: %.3f with the sender working (%s)"
             % (speed["speed"], speed["source"]))
        _log("  %.3f with it waiting (%s)" % (speed["speed_idle"], speed["idle_source"]))
        store = GridStore(args.json, {
            "guest": "linux", "workload": cfg.workload, "repeat": args.repeat,
            "grid": args.grid or "linux", "loadavg_start": list(os.getloadavg()),
            "host_note": "a shared 2-core host: other jobs ran beside these runs (loadavg)",
            "model": {"file": os.path.abspath(model_path), "sha256": file_hash(model_path),
                      "summary": wl_model.summary(trace),
                      "meta": {k: v for k, v in trace.meta.items()}},
            "base_calibration": {"file": os.path.abspath(args.calibration[0]),
                                 "sha256": file_hash(args.calibration[0])},
            "calibrations": {"tcg": {"file": os.path.abspath(cal_path),
                                     "sha256": file_hash(cal_path),
                                     "calibration": cal.to_file_dict(),
                                     "guest_speed": speed}}})
        store.write()
        cal_hash = file_hash(cal_path)
        for name, c in cells:
            pred = lp.predict(c, cal, trace, speed["speed"], speed["speed_idle"])
            cell = {"name": name, "config": c.as_dict(), "interface": "bitmap",
                    "calibration_sha256": cal_hash, "calibration_accel": "tcg",
                    "predicted_at": now(), "prediction": pred, "runs": []}
            store.cells.append(cell)
            store.write()          # the prediction is on disk before the first run
            for i in range(args.repeat):
                started = now()
                t = time.monotonic()
                try:
                    r = run_record(run_migration(c))
                except QemuError as e:
                    r = {"error": "%s: %s" % (type(e).__name__, e)}
                r["started_at"], r["loadavg"] = started, list(os.getloadavg())
                cell["runs"].append(r)
                store.write()
                _log("%s run %d/%d: %s in %.1f s%s" % (
                    name, i + 1, args.repeat, r.get("status", "error"), time.monotonic() - t,
                    "" if "error" not in r else " (%s)" % r["error"]))
            summarise(cell, cal)
            store.write()
    except QemuError as e:
        print("pykvmdirty qemu: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pykvmdirty qemu: interrupted", file=sys.stderr)
        return 130
    print("Linux guest (%s, %d MiB, TCG): predicted (blind, written before the runs) against "
          "real QEMU 7.2: median [min - max] of %d runs; load average %s"
          % (cfg.workload, cfg.guest_size >> 20, args.repeat,
             " ".join("%.2f" % x for x in os.getloadavg())))
    for line in table_lines(store.cells):
        print(line)
    print()
    for line in goal_summary(store.cells):
        print(line)
    lost = [(c["name"], r["verification"].get("differing_pages", 0)) for c in store.cells
            for r in c["runs"] if r.get("verification", {}).get("tcg_lost_writes")]
    print("destination RAM: %s" % ("equal to the source's in every verified run" if not lost
                                   else "%d run(s) differ in a few pages (QEMU 7.2 under TCG "
                                   "loses the last writes after a sync): %s" % (
                                       len(lost), ", ".join("%s: %d" % x for x in lost))))
    print("wrote %s" % args.json)
    if args.plot:
        plot(store.cells, args.plot)
    return 0
