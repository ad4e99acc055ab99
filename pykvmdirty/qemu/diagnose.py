"""Why a grid cell misses a goal: the mechanisms of the pre-copy loop, each
measured in the real runs (from their 100 ms query-migrate and guest-counter
samples; compare.py takes the median over a cell's runs) and in the blind
prediction (from its pass records), side by side: median against median.

For every missed goal, the mechanisms that bear on it are compared and those
that differ by more than ``DIFFERS`` (relative) are named, largest first,
with both figures: e.g. "pages dirtied per second as QEMU counts them
(dirty-pages-rate): measured 13.4k/s, model 40.2k/s".  A miss where no
mechanism differs that much names the closest one and says so.
"""
from typing import List
from ..bindings.constants import WIRE_PAGE_RECORD  # = QEMU's record: be64 header + the page

DIFFERS = 0.25

# goal -> the mechanisms that decide it
MECHANISMS = {
    "status": ("dirty_rate", "throttle", "sync_interval"),
    "syncs": ("dirty_rate", "sync_interval", "threshold", "throttle", "bulk_time"),
    "transferred": ("iter_normal", "threshold", "dirty_rate", "throttle", "downtime_pages"),
    "normal": ("iter_normal", "threshold", "dirty_rate", "throttle", "downtime_pages"),
    "total_time": ("bulk_time", "iter_time", "stalls", "setup", "downtime_ms"),
    "downtime": ("downtime_pages", "stopped_cost"),
}

LABELS = {
    "dirty_rate": ("pages newly dirtied per second as QEMU counts them at its syncs "
                   "(dirty-pages-rate)", "rate"),
    "sync_interval": ("time between bitmap syncs after the bulk pass", "ms"),
    "throttle": ("auto-converge throttle reached", "pct"),
    "bulk_time": ("bulk pass (setup to the 2nd sync: every page once; sender speed, "
                  "+-0.1 s sampling)", "ms"),
    "iter_time": ("iterative phase (2nd sync to the stop)", "ms"),
    "iter_normal": ("normal pages re-sent after the bulk pass, VM running (+-0.1 s "
                    "sampling)", "count"),
    "setup": ("setup time", "ms"),
    "threshold": ("switch-over threshold at the end of the bulk pass (bandwidth of the last "
                  "100 ms window x downtime-limit; measured from QEMU's mbps)", "MB"),
    "stalls": ("sender stalled (100 ms samples with pages pending and none sent)", "ms"),
    "downtime_ms": ("downtime", "ms"),
    "downtime_pages": ("normal pages sent with the VM stopped", "count"),
    "stopped_cost": ("send time per normal page with the VM stopped", "us"),
}


def _fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "rate":
        return "%.1fk/s" % (v / 1000)
    if unit == "ms":
        return "%.0f ms" % (v * 1000)
    if unit == "us":
        return "%.1f us" % (v * 1e6)
    if unit == "MB":
        return "%.1f MB" % (v / 1e6)
    if unit == "pct":
        return "%d%%" % v
    return "%d" % v


def measured_mechanisms(result_dict, overhead_s, downtime_limit=None):
    """The mechanism figures of a real run (a QemuResult.as_dict())."""
    r = result_dict
    s = [x for x in r["samples"] if x["status"] in ("active", "completed")]
    # QEMU recomputes the rate at a sync >= 1 s after the previous: the median
    # of the periods' values (the last one can follow the guest's last dip)
    rates = sorted(x["dirty_pages_rate"] for x in s if x["dirty_pages_rate"])
    second = next((x for x in s if x["dirty_sync_count"] >= 2 and x["status"] == "active"),
                  None)
    stop = r["total_time"] - r["downtime"]
    dpages = r["downtime_bytes"] // WIRE_PAGE_RECORD
    stalls = sum(b["t"] - a["t"] for a, b in zip(s, s[1:])
                 if a["status"] == b["status"] == "active" and a["remaining"] and
                 (a["normal"], a["duplicate"]) == (b["normal"], b["duplicate"]))
    # (None when no period of >= 1 s ended: QEMU never computed it)
    m = {"dirty_rate": rates[len(rates) // 2] if rates else None,
         "throttle": r["throttle_max"],
         "stalls": stalls,
         "setup": r["setup_time"], "downtime_ms": r["downtime"],
         "downtime_pages": dpages,
         "stopped_cost": (max(r["downtime"] - overhead_s, 0) / dpages) if dpages else None}
    before = [x for x in s if x["dirty_sync_count"] < 2 and x["mbps"]]
    if downtime_limit and before:
        m["threshold"] = before[-1]["mbps"] * 1e6 / 8 * downtime_limit
    if second is not None:
        m["bulk_time"] = second["t"]
        m["iter_time"] = max(stop - second["t"], 0.0)
        m["iter_normal"] = max(r["normal"] - dpages - second["normal"], 0)
    last_bulk = [x for x in s if x["dirty_sync_count"] < 2]
    if last_bulk and second is not None:
        # normal pages sent by the last sample of the bulk pass (+-0.1 s)
        m["iter_normal"] = max(r["normal"] - dpages - last_bulk[-1]["normal"], 0)
        n = r["dirty_sync_count"] - 1 - second["dirty_sync_count"]   # syncs before the stop
        m["sync_interval"] = m["iter_time"] / n if n > 0 else None
    else:
        m.update(bulk_time=stop, iter_time=0.0, iter_normal=0, sync_interval=None)
    return m


def model_mechanisms(pred, calibration=None):
    """The same figures from a blind prediction (predict.predict's dict: its
    totals and its "passes", one record per pass of the loop with "kind"
    (bulk, iterate, stop-and-copy), "sent" and "zero" pages and "duration"
    seconds), and the calibration's stopped-VM send cost."""
    p = pred
    passes = p.get("passes") or []
    stop = p["total_time"] - p["downtime"]
    m = {"dirty_rate": p.get("dirty_pages_rate"), "throttle": p.get("throttle_max"),
         "stalls": 0.0,                  # the model's sender never waits with work to do
         "setup": p.get("setup_time"), "downtime_ms": p["downtime"],
         "downtime_pages": None,
         "stopped_cost": (calibration.send_normal_stopped_s if calibration is not None
                          else None)}
    normal = [x.get("sent", 0) - x.get("zero", 0) for x in passes]
    final = [i for i, x in enumerate(passes) if x.get("kind") == "stop-and-copy"]
    if final:
        m["downtime_pages"] = normal[final[-1]]
    iters = [i for i, x in enumerate(passes) if x.get("kind") == "iterate"]
    bulk = [i for i, x in enumerate(passes) if x.get("kind") == "bulk"]
    if bulk:
        m["bulk_time"] = p.get("setup_time", 0.0) + sum(passes[i].get("duration", 0.0)
                                                        for i in bulk)
        m["iter_time"] = max(stop - m["bulk_time"], 0.0)
        m["iter_normal"] = sum(normal[i] for i in iters)
        m["sync_interval"] = (sum(passes[i].get("duration", 0.0) for i in iters) / len(iters)
                              if iters else None)
    else:
        m.update(bulk_time=stop, iter_time=0.0, iter_normal=0, sync_interval=None)
    return m


def _diff(a, b):
    if a is None or b is None:
        return None
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


KNIFE_EDGE = (0.8, 1.25)
EDGE_GOALS = ("status", "syncs", "transferred", "normal", "total_time")


def explain(goals, measured_mech, model_mech, bandwidth=0):
    """{missed goal: [sentence, ...]} naming the mechanisms that differ.

    With `bandwidth` (max-bandwidth, bytes/s): where the guest dirtied pages
    about as fast as max-bandwidth lets QEMU send them (measured dirty-pages-
    rate within KNIFE_EDGE of it), convergence hangs on small swings of the
    guest's rate, and the sync, byte and time goals say so first."""
    out = {}
    edge = None
    if bandwidth and measured_mech.get("dirty_rate"):
        send = bandwidth / WIRE_PAGE_RECORD
        ratio = measured_mech["dirty_rate"] / send
        if KNIFE_EDGE[0] <= ratio <= KNIFE_EDGE[1]:
            edge = ("knife edge: the guest dirtied %s (median dirty-pages-rate), %.2f x the "
                    "%s max-bandwidth sends; model %s" % (
                        _fmt(measured_mech["dirty_rate"], "rate"), ratio, _fmt(send, "rate"),
                        _fmt(model_mech.get("dirty_rate"), "rate")))
    for goal, ok in goals.items():
        if ok:
            continue
        found = []
        for k in MECHANISMS[goal]:
            d = _diff(measured_mech.get(k), model_mech.get(k))
            if d is not None:
                found.append((d, k))
        found.sort(reverse=True)
        lines: List[str] = []
        for d, k in found:
            if d <= DIFFERS and lines:
                break
            label, unit = LABELS[k]
            lines.append("%s: measured %s, model %s%s" % (
                label, _fmt(measured_mech.get(k), unit), _fmt(model_mech.get(k), unit),
                "" if d > DIFFERS else " (closest; no mechanism differs by > %d%%)"
                % (DIFFERS * 100)))
            if len(lines) == 2:
                break
        lines = lines or ["no mechanism measurable in this run"]
        if edge and goal in EDGE_GOALS:
            lines = [edge] + lines[:1]
        out[goal] = lines
    return out
