"""The model's measured inputs, taken from real QEMU runs on this machine.

- :func:`guest_rate_under_migration`: the guest's page writes per second while
  QEMU migrates it and has not throttled it, from the runner's 100 ms samples
  of the guest's own counter (dirty logging itself slows a guest down: under
  KVM each first write after a sync faults), falling back to the warm-up rate;
- :func:`calibrate`: the sender's per-page costs (:class:`profile.Platform`)
  from two short real migrations: an idle guest at unlimited bandwidth (zero
  pages, fixed downtime and setup overhead) and the default a-b guest with a
  downtime limit so large that the whole range re-dirtied during the bulk pass
  goes in the downtime (normal pages while the guest runs, from the precopy
  samples; with the VM stopped, from the downtime).  The sender's speed
  depends on what the guest does to the host (a guest faulting on every first
  write under KVM dirty logging takes a core), so the a-b guest is the grid's.
"""
import numpy as np

from .config import QemuConfig
from .profile import Platform
from .runner import run_migration

UNLIMITED = 64 << 30


def guest_rate_under_migration(result):
    """Pages/s the guest wrote while migrating unthrottled (samples), else warm-up."""
    s = [x for x in result.samples if x["status"] == "active"]
    dt = dp = 0.0
    for a, b in zip(s, s[1:]):
        if a["throttle"] == 0 and b["throttle"] == 0:
            dt += b["t"] - a["t"]
            dp += b["guest_pages"] - a["guest_pages"]
    if dt >= 0.15:
        return dp / dt
    return result.guest_rate_migrating or result.guest_rate


def fault_rate(result, npages):
    """First writes per second to write-protected pages, from an a-b guest's counter.

    Once QEMU starts sending, every page of the range is write-protected, so the
    guest's first sweep after `migrate` faults on each of its `npages` pages; the
    counter moves when that sweep ends. Sampled every 100 ms: the midpoint of the
    samples around the first change (None if it never moved while active)."""
    s = result.samples
    if not s:
        return None
    p0 = s[0]["guest_pages"]
    for a, b in zip(s, s[1:]):
        if b["guest_pages"] != p0:
            if b["status"] != "active" and a["status"] != "active":
                return None
            return npages / max((a["t"] + b["t"]) / 2, 1e-3)
    return None


def _fit_costs(samples, zero_page_s=None):
    """Least squares dt = a x normal + b x duplicate over consecutive active samples."""
    rows, dts = [], []
    s = [x for x in samples if x["status"] == "active"]
    for a, b in zip(s, s[1:]):
        dn, dd = b["normal"] - a["normal"], b["duplicate"] - a["duplicate"]
        if dn or dd:
            rows.append((dn, dd))
            dts.append(b["t"] - a["t"])
    if not rows:
        return None, None
    A, y = np.array(rows, dtype=float), np.array(dts)
    if zero_page_s is not None:
        y = y - A[:, 1] * zero_page_s
        n = A[:, 0]
        return (float(n @ y / (n @ n)) if n @ n else None), zero_page_s
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    return max(float(sol[0]), 0.0), max(float(sol[1]), 0.0)


def calibrate(accel="auto", on_progress=None):
    """Platform costs measured with two real migrations (about 10 s)."""
    idle = run_migration(QemuConfig(workload="idle", bandwidth=UNLIMITED, accel=accel,
                                    warmup=0.3, verify=False))
    if on_progress:
        on_progress("idle calibration done")
    total_pages = idle.normal + idle.duplicate
    run_s = max(idle.total_time - idle.downtime - idle.setup_time, 1e-3)
    zero_s = run_s / max(total_pages, 1)
    overhead = max(idle.downtime, 0.0)
    ab = run_migration(QemuConfig(workload="ab", bandwidth=UNLIMITED, downtime_limit=10.0,
                                  accel=accel,
                                  warmup=0.3, verify=False))
    if on_progress:
        on_progress("a-b calibration done")
    normal_s, _ = _fit_costs(ab.samples, zero_page_s=zero_s)
    if normal_s is None:   # everything went in one sample: whole precopy phase
        pre = max(ab.total_time - ab.downtime - ab.setup_time, 1e-3)
        pages_pre = max(ab.normal - ab.downtime_bytes // 4104, 1)
        normal_s = max(pre - zero_s * ab.duplicate, 1e-6) / pages_pre
    faults = fault_rate(ab, ab.config["end"] // 4096 - ab.config["start"] // 4096)
    final_pages = max(ab.downtime_bytes // 4104, 1)
    stopped_s = max(ab.downtime - overhead, 1e-4) / final_pages
    return Platform(normal_page_s=normal_s, zero_page_s=zero_s, stopped_normal_page_s=stopped_s,
                    downtime_overhead_s=overhead, setup_s=(idle.setup_time + ab.setup_time) / 2,
                    fault_rate=faults or Platform.fault_rate, measured=True)
