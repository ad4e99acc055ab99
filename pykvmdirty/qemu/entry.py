"""``kd.migrate(profile="qemu")`` and ``pykvmdirty migrate --profile qemu``: the
QEMU profile (profile.py) run from migrate's own arguments.

The workload runs over QEMU migration-test's range, [1 MiB, 100 MiB) of the
guest (``migration-test`` is the a-b guest); ``rate`` is the guest's page
writes per second (``pykvmdirty qemu`` measures it on a real guest instead).
The per-page costs are the Platform defaults unless a measured Platform is
given (``pykvmdirty qemu`` measures one).
"""
from .layout import MIB, PAGE
from .profile import GuestModel, Platform, QemuSettings, predict

WORKLOADS = {"migration-test": "ab", "ab": "ab", "uniform": "uniform",
             "hotspot": "hotspot", "idle": "idle"}
# migrate()'s arguments the profile has no use for (they describe the emulator's loop)
IGNORED = ("slots", "backend", "strategy", "mode", "vcpus", "link_bandwidth", "max_wait",
           "max_passes", "zero_pages", "clear_shift", "populate", "fill", "sink", "step",
           "cost_model", "batch_bytes", "ring_entries", "dirty_tracking", "window_log",
           "progress", "verify", "zipf_s", "trace", "record")


PROFILES = ("qemu",)


def check_profile(profile):
    if profile not in PROFILES:
        raise ValueError("profile must be one of %s (or None), got %r"
                         % (", ".join(PROFILES), profile))


def cli_run(args, bandwidth):
    """`pykvmdirty migrate --profile qemu`: print (and --json) the prediction."""
    import json
    from ..migration.config import parse_size
    pred = migrate_qemu_profile(parse_size(args.guest_size, "guest_size"), args.workload,
                                args.rate, args.hot_fraction, args.hot_share, args.seed,
                                bandwidth, args.downtime_limit, args.auto_converge)
    s = pred.summary()
    print("QEMU 7.2 profile (model, default per-page costs): %s in %.3f s, setup %.0f ms, "
          "downtime %.0f ms (expected %.0f ms), %d bitmap syncs, %.1f MB transferred, "
          "%d normal + %d duplicate pages, throttle reached %d%%" % (
              s["status"], s["total_time"], s["setup_time"] * 1e3, s["downtime"] * 1e3,
              pred.expected_downtime * 1e3, s["dirty_sync_count"], s["transferred"] / 1e6,
              s["normal"], s["duplicate"], s["throttle_max"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(pred.as_dict(), f, indent=1)
        print("prediction written to %s" % args.json)
    return 0


def migrate_qemu_profile(guest_bytes, workload="migration-test", rate=0, hot_fraction=0.05,
                         hot_share=0.9, seed=1, bandwidth=128 * MIB, downtime_limit=0.3,
                         auto_converge=False, duration_limit=None, start=MIB, end=100 * MIB,
                         platform=None):
    """The QEMU profile's Prediction for these settings."""
    if workload not in WORKLOADS:
        raise ValueError("the qemu profile models workloads %s, not %r"
                         % (", ".join(WORKLOADS), workload))
    kind = WORKLOADS[workload]
    if guest_bytes % PAGE or guest_bytes < end:
        raise ValueError("the qemu profile needs a guest of at least %d bytes (its workload "
                         "range ends there), got %d" % (end, guest_bytes))
    if kind in ("uniform", "hotspot") and not rate > 0:
        raise ValueError("workload %r needs rate > 0 pages/s, got %r" % (workload, rate))
    if kind == "ab" and not rate:
        raise ValueError("the a-b guest's rate (pages/s) must be given: QEMU's guest has no "
                         "rate of its own; `pykvmdirty qemu` measures it")
    npages = (end - start) // PAGE
    hot_pages = max(1, min(npages, int(hot_fraction * npages + 0.5)))
    import random
    hot_first = random.Random(seed).randrange(npages - hot_pages + 1)
    platform = platform or Platform()
    # the a-b guest's pages/s are its first writes (each faults under dirty logging)
    faults = float(rate) if kind == "ab" else platform.fault_rate
    guest = GuestModel(kind, guest_bytes // PAGE, start // PAGE, npages, float(rate),
                       fault_rate=faults, hot_first=hot_first, hot_pages=hot_pages,
                       hot_share=hot_share,
                       seed=seed, written_before=npages if kind == "ab" else int(rate))
    settings = QemuSettings(bandwidth=int(bandwidth or 0), downtime_limit=downtime_limit,
                            auto_converge=bool(auto_converge),
                            timeout=duration_limit if duration_limit else 600.0)
    return predict(guest, settings, platform)
