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
from dataclasses import replace
from typing import List

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
    """First writes per second to write-protected pages in the bulk pass, from an
    a-b guest's counter (it moves by `npages` at the end of each sweep).

    Once QEMU starts sending, every page of the range is write-protected; the
    sweep under way at `migrate` ends first (part of it ran before logging), so
    the whole sweep between the first two counter changes is the one measured:
    npages / (time between the changes), each change placed at the midpoint of
    its 100 ms samples.  With a single change: npages / the time from it to the
    last active sample (the sweep begun there had not ended: an upper bound;
    npages / the time to the change if that is under 0.1 s); with none,
    npages / the last active sample's time (an upper bound).  None without
    active samples."""
    s = result.samples
    if not s:
        return None
    changes = []
    for a, b in zip(s, s[1:]):
        if b["guest_pages"] != a["guest_pages"]:
            if b["status"] != "active" and a["status"] != "active":
                break
            changes.append((a["t"] + b["t"]) / 2)
            if len(changes) == 2:
                return npages / max(changes[1] - changes[0], 1e-3)
    active = [x["t"] for x in s if x["status"] == "active"]
    if changes:
        # the sweep begun at the change had not ended by the last active sample
        # (the one before it began before logging: it bounds nothing)
        after = (active[-1] if active else 0.0) - changes[0]
        return npages / (after if after >= 0.1 else max(changes[0], 1e-3))
    # no sweep ended while migrating: fewer than npages first writes in that time
    return npages / max(active[-1], 1e-3) if active else None


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
    fitted, how = run_costs(ab, Platform(zero_page_s=zero_s), 0)
    normal_s = fitted.normal_page_s if how and how[0].startswith("normal") else None
    if normal_s is None:   # no sample with enough normal pages: the whole precopy phase
        pre = max(ab.total_time - ab.downtime - ab.setup_time, 1e-3)
        pages_pre = max(ab.normal - ab.downtime_bytes // 4104, 1)
        normal_s = max(pre - zero_s * ab.duplicate, 1e-6) / pages_pre
    faults = fault_rate(ab, ab.config["end"] // 4096 - ab.config["start"] // 4096)
    final_pages = max(ab.downtime_bytes // 4104, 1)
    stopped_s = max(ab.downtime - overhead, 1e-4) / final_pages
    # a page sent while the guest runs costs at least one sent with it stopped
    # (a precopy phase too short to fit leaves the whole-phase estimate at ~0)
    normal_s = max(normal_s, stopped_s)
    return Platform(normal_page_s=normal_s, zero_page_s=zero_s, stopped_normal_page_s=stopped_s,
                    downtime_overhead_s=overhead, setup_s=(idle.setup_time + ab.setup_time) / 2,
                    fault_rate=faults or Platform.fault_rate, measured=True)


def iter_fault_rate(result, npages):
    """An a-b guest's page writes per second after the bulk pass (from the second
    bitmap sync on, unthrottled, still active): with syncs closer together than
    one sweep, each of these writes is a first write after a re-protection, so
    this is the fault-bound rate of the iterative phase.  The counter moves once
    per sweep of `npages`: None unless at least one whole sweep was seen, or if
    a sweep took less than a sync interval (then part of the writes were to
    pages already unprotected, at the guest's native speed)."""
    s = [x for x in result.samples if x["status"] == "active" and x["dirty_sync_count"] >= 2
         and x["throttle"] == 0]
    if len(s) < 2:
        return None
    dp, dt = s[-1]["guest_pages"] - s[0]["guest_pages"], s[-1]["t"] - s[0]["t"]
    if dp < npages or dt < 0.15:
        return None
    syncs = s[-1]["dirty_sync_count"] - s[0]["dirty_sync_count"]
    if syncs and npages / (dp / dt) < dt / syncs:
        return None     # a sweep is shorter than a sync interval: rewrites ran native
    return dp / dt


def _cost_rows(samples, phase, bandwidth):
    """Per interval of one phase: [normal, duplicate] pages, seconds, and whether
    its throughput stayed under ``LIMITED`` of max-bandwidth (then it did not
    sleep to the end of a rate-limited window)."""
    rows, dts, free = [], [], []
    s = [x for x in samples if x["status"] == "active"]
    for a, b in zip(s, s[1:]):
        if (b["dirty_sync_count"] >= 2) != (phase == "iter"):
            continue
        dt = b["t"] - a["t"]
        dn, dd = b["normal"] - a["normal"], b["duplicate"] - a["duplicate"]
        if dt > 0 and (dn or dd):
            rows.append((dn, dd))
            dts.append(dt)
            free.append(not bandwidth or
                        (b["transferred"] - a["transferred"]) / dt < LIMITED * bandwidth)
    return (np.array(rows, dtype=float).reshape(-1, 2), np.array(dts),
            np.array(free, dtype=bool))


LIMITED = 0.8            # throughput share of max-bandwidth that counts as rate limited
MIN_ZERO_PAGES = 1000    # zero pages in zero-only intervals needed to fit their cost
MIN_NORMAL_PAGES = 1000  # normal pages in unlimited intervals needed to fit their cost


def _fit(A, y, free, normal_s, zero_s, fastest=False):
    """(normal_s, zero_s, names fitted).

    Zero pages (9 bytes: never rate limited) cost the time of the intervals that
    sent only zero pages over their count.  A normal page costs the time of the
    intervals that were not rate limited and mostly sent normal pages (less
    their zero pages) over their normal pages.  When every such interval was
    rate limited, the sender kept up with max-bandwidth: its fastest interval
    bounds the cost (which then no longer decides anything).  ``fastest``: that
    bound in any case (the iterative phase: its intervals mix sends with bitmap
    syncs and sleeps to the ends of windows, which the model accounts for
    itself)."""
    how: List[str] = []
    if not len(y):
        return normal_s, zero_s, how
    only_zero = (A[:, 0] == 0) & (A[:, 1] > 0)
    if A[only_zero, 1].sum() >= MIN_ZERO_PAGES:
        zero_s = float(y[only_zero].sum() / A[only_zero, 1].sum())
        how.append("zero")
    mostly = (A[:, 0] > 0) & (A[:, 1] * zero_s < 0.5 * y)
    rows = mostly & free
    if not fastest and A[rows, 0].sum() >= MIN_NORMAL_PAGES:
        normal_s = float((y[rows] - A[rows, 1] * zero_s).sum() / A[rows, 0].sum())
        how.insert(0, "normal")
    elif (mostly & (A[:, 0] >= 200)).any():
        rows = mostly & (A[:, 0] >= 200)
        normal_s = float(((y[rows] - A[rows, 1] * zero_s) / A[rows, 0]).min())
        how.insert(0, "normal (fastest)")
    return max(normal_s, 1e-7), zero_s, how


def _fastest_normal(A, y, zero_s):
    """The least time per normal page over intervals that mostly sent normal pages."""
    if not len(y):
        return float("inf")
    rows = (A[:, 0] >= 200) & (A[:, 1] * zero_s < 0.5 * y)
    if not rows.any():
        return float("inf")
    return max(float(((y[rows] - A[rows, 1] * zero_s) / A[rows, 0]).min()), 1e-7)


def run_costs(result, base: Platform, bandwidth):
    """The sender's per-page costs in this run, from its own 100 ms samples (see
    _fit), separately for the bulk pass (before the 2nd sync: the sender competes
    for this machine's cores with a vCPU faulting on its first writes) and for
    the iterative phase after it.  A cost the samples cannot determine keeps the
    calibrated value.  With the VM stopped the sender competes with no vCPU:
    its per-page cost is at most the fastest running interval's.  The setup
    time is the run's own (QEMU's ram_save_setup:
    bitmaps and starting dirty logging).  Returns (Platform, names of the values
    taken from the run)."""
    A0, y0, free = _cost_rows(result.samples, "bulk", bandwidth)
    normal_s, zero_s, how = _fit(A0, y0, free, base.normal_page_s, base.zero_page_s)
    A, y, free = _cost_rows(result.samples, "iter", bandwidth)
    iter_s, _, how_iter = _fit(A, y, free, base.normal_page_s, zero_s, fastest=True)
    how_iter = [h for h in how_iter if h.startswith("normal")]
    iter_fitted = bool(how_iter)
    # with the VM stopped the sender has no vCPU to compete with: at least as
    # fast as in its fastest interval while the guest ran
    fastest = min(_fastest_normal(A0, y0, zero_s), _fastest_normal(A, y, zero_s))
    stopped_s = min(base.stopped_normal_page_s, fastest)
    p = replace(base, normal_page_s=normal_s, zero_page_s=zero_s,
                normal_page_s_iter=iter_s if iter_fitted else base.normal_page_s,
                stopped_normal_page_s=stopped_s,
                setup_s=result.setup_time or base.setup_s)
    how = [h + " (bulk)" for h in how] + [h + " (after)" for h in how_iter]
    if stopped_s < base.stopped_normal_page_s:
        how.append("stopped (fastest running)")
    if result.setup_time:
        how.append("setup")
    return p, how
