"""Figures measured from a real QEMU run's 100 ms samples, for the calibration
cells (calibration.py) only: the judged prediction never reads a run.

- :func:`fault_rate_how` / :func:`fault_rate`: an a-b guest's first writes
  per second to write-protected pages in the bulk pass (under KVM each first
  write after dirty logging starts faults), from its counter;
- :func:`iter_fault_rate`: the same after the bulk pass;
- :func:`bulk_normal_cost`: seconds per normal page sent while the guest runs,
  from the bulk pass's intervals that were not rate limited.
"""
import numpy as np


def fault_rate_how(result, npages):
    """First writes per second to write-protected pages in the bulk pass, from an
    a-b guest's counter (it moves by `npages` at the end of each sweep).

    When dirty logging starts (the first sample, setup) every page is
    write-protected and the guest is somewhere in a sweep (at native speed a
    sweep takes well under a millisecond, so anywhere): it faults on the rest
    of that sweep (the counter moves: npages), then on the pages before where
    it was, and runs native past them to the end of the next sweep (the
    counter moves again: 2 x npages). So from the start to the second move
    the guest took exactly npages first writes: npages / that time, the move
    placed at the midpoint of its 100 ms samples. Without a second move by the
    last active sample the guest took fewer than npages first writes by then:
    npages / the time to that sample is an upper bound of the rate.
    None without active samples.  Returns (rate, how it was timed)."""
    s = [x for x in result.samples if x["status"] in ("setup", "active")]
    if len(s) < 2:
        return None, "no active sample"
    t0, base = s[0]["t"], s[0]["guest_pages"]
    for a, b in zip(s, s[1:]):
        if b["guest_pages"] - base >= 2 * npages:
            t = (a["t"] + b["t"]) / 2
            return npages / max(t - t0, 1e-3), "the first sweep over protected pages timed"
    moved = s[-1]["guest_pages"] - base
    return (npages / max(s[-1]["t"] - t0, 1e-3),
            "upper bound: %s by the last active sample"
            % ("one sweep end" if moved >= npages else "no sweep end"))


def fault_rate(result, npages):
    """fault_rate_how's rate alone."""
    return fault_rate_how(result, npages)[0]


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
    # the last "setup" sample starts the first interval (setup takes a few ms)
    s = [x for x in samples if x["status"] in ("setup", "active")]
    for a, b in zip(s, s[1:]):
        if b["status"] != "active":
            continue
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
MIN_NORMAL_PAGES = 1000  # normal pages in unlimited intervals needed to fit their cost


def bulk_normal_cost(samples, zero_s):
    """(seconds per normal page sent in the bulk pass, how), or (None, why not):
    the time of the intervals that were not rate limited and mostly sent normal
    pages, less their zero pages at `zero_s`, over their normal pages
    (unlimited bandwidth: every interval is free)."""
    A, y, free = _cost_rows(samples, "bulk", 0)
    if not len(y):
        return None, "no bulk-pass interval"
    mostly = (A[:, 0] > 0) & (A[:, 1] * zero_s < 0.5 * y) & free
    n = A[mostly, 0].sum()
    if n < MIN_NORMAL_PAGES:
        return None, "only %d normal pages in mostly-normal intervals" % n
    cost = float((y[mostly] - A[mostly, 1] * zero_s).sum() / n)
    return cost, ("a-b cell, bulk pass: %d 100 ms intervals sending %d normal pages (their "
                  "zero pages at send_zero_s taken out)" % (int(mostly.sum()), int(n)))
