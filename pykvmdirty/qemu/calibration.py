"""This machine's platform costs for the blind QEMU prediction, measured once
(each cell three times; each cost the median of its three values).

:func:`calibrate_qemu` runs DEDICATED calibration cells (never a cell of a
judged grid), each a real QEMU 7.2 migration of the test guest (runner.py):

- ``idle``: an idle 1 GiB guest at unlimited bandwidth (every page zero but
  the firmware's): the cost of one zero page, the setup and the downtime of a
  stop with almost nothing to send;
- ``ab``: the a-b guest (1 GiB, [1 MiB, 100 MiB)) at unlimited bandwidth with
  downtime-limit 10 s: it stops as soon as the first 100 ms windows say the
  rest fits in 10 s, so its downtime sends most of the range. Its warm-up
  (before dirty logging) gives the guest's own cost of a page write; its bulk-
  pass samples the cost of a normal page sent while the guest runs; its
  downtime against the idle cell's the cost of a normal page with the VM
  stopped and the fixed overhead of the stop;
- ``ab-fault``: the a-b guest (the default [1 MiB, 100 MiB)) at 32 MiB/s with
  downtime-limit 1 ms (never converges; cancelled after 5 s): in its ~3 s
  bulk pass the guest faults on every page of the range once (the rest of the
  sweep under way, then the pages before it) and then runs native: the bulk
  pass's first-write cost;
- ``ab-iter``: the same at 256 MiB/s (cancelled after 4 s): after a short
  bulk pass the loop syncs far more often than the guest sweeps its range, so
  every write is a first write after a re-protection: the iterative phase's
  first-write cost;
- ``uniform-fault``: a uniform guest asking for 400k writes/s at 32 MiB/s
  (the sender nearly idle): its counter, per 100 us batch, times the first
  writes of random pages (their number follows from the writes since logging
  began);
- ``uniform-busy``: the same guest at unlimited bandwidth: the host time its
  faults take from the sender (each bulk interval's time less its pages at
  their costs, over its first writes);
- ``uniform-stop``: a uniform guest at 30k writes/s, unlimited, downtime-limit
  300 ms: it completes after its bulk pass, so its downtime sends pages that
  went out before: with the idle cell's downtime, the cost of a normal page
  with the VM stopped (the ``ab`` cell's downtime holds first sends, which
  cost the destination more: the fallback).

None of them is a cell of a judged grid (compare.py).

Every cost field is paired with its source: the calibration cell and figure
it was computed from, or ``"assumed: <reason>"`` (the CLI prints those as
assumed).  Nothing falls back to a default silently.

The file (:meth:`Calibration.save`, :func:`load`) is JSON::

    {"format": "pykvmdirty-qemu-calibration", "version": 1,
     "fields": {"send_normal_s": {"value": 7.1e-06, "source": "..."}, ...},
     "machine": ..., "date": ..., "accel": ..., "qemu_version": ..., "interface": ...,
     "cells": {cell: {figure: value}}}

and is read as untrusted input: bounded size, every field checked, errors
name the field.
"""
import dataclasses
import hashlib
import json
import math
import numbers
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from .config import QemuConfig
from ..units import MiB
from .layout import PAGE
from .measure import bulk_normal_cost, fault_rate_how, iter_fault_rate
from .runner import run_migration
from ..bindings.constants import WIRE_PAGE_RECORD  # = QEMU's record: be64 header + the page

FORMAT = "pykvmdirty-qemu-calibration"
VERSION = 1
MAX_FILE_BYTES = 1 << 20
UNLIMITED = 64 << 30                # max-bandwidth "unlimited": 64 GiB/s

#: cost fields (seconds), what each prices, and the largest value accepted
COSTS = {
    "send_normal_s": ("one normal page sent while the guest runs", 1e-2),
    "send_zero_s": ("one zero page (checked, sent as a header) while the guest runs", 1e-2),
    "send_normal_stopped_s": ("one normal page sent with the VM stopped", 1e-2),
    "downtime_overhead_s": ("stop, final sync, device state and EOS beyond sending pages",
                            10.0),
    "setup_s": ("QEMU's migration setup (bitmaps, start of dirty logging)", 10.0),
    "guest_write_s": ("the guest's own cost of one page write, no dirty logging", 1e-2),
    "guest_fault_s": ("extra vCPU time of a first write to a write-protected page under "
                      "dirty logging, bulk pass", 1e-2),
    "guest_fault_iter_s": ("the same after the bulk pass", 1e-2),
    "guest_fault_random_s": ("extra vCPU time of a first write to a write-protected page, "
                             "random writes (uniform, hotspot)", 1e-2),
    "fault_contention_s": ("host time one guest write fault takes from QEMU's sender (same "
                           "cores, same locks)", 1e-2),
    "sync_s": ("fixed cost of one bitmap sync (KVM GET of the slot + QEMU's bitmap walk)",
               1.0),
    "ring_harvest_s": ("one dirty-ring entry harvested by QEMU's reaper", 1e-3),
    "ring_reset_s": ("one dirty-ring entry reset (KVM_RESET_DIRTY_RINGS)", 1e-3),
}
META = ("machine", "date", "accel", "qemu_version", "interface")
MAX_TEXT = 2000


@dataclass
class Calibration:
    """Per-event costs in seconds, each with its source (``sources[name]``)."""
    send_normal_s: float
    send_zero_s: float
    send_normal_stopped_s: float
    downtime_overhead_s: float
    setup_s: float
    guest_write_s: float
    guest_fault_s: float
    guest_fault_iter_s: float
    guest_fault_random_s: float
    fault_contention_s: float
    sync_s: float
    ring_harvest_s: float
    ring_reset_s: float
    sources: Dict[str, str]
    machine: str = ""
    date: str = ""
    accel: str = ""
    qemu_version: str = ""
    interface: str = "bitmap"
    cells: Dict[str, dict] = field(default_factory=dict)   # the calibration cells' figures

    def __post_init__(self):
        for name in COSTS:
            _check_cost(name, getattr(self, name), "Calibration")
            src = self.sources.get(name) if isinstance(self.sources, dict) else None
            if not isinstance(src, str) or not src.strip():
                raise ValueError("Calibration: field %s has no source" % name)

    def source(self, name) -> str:
        return self.sources[name]

    def assumed(self, name) -> bool:
        return self.sources[name].startswith("assumed")

    def inputs(self) -> Dict[str, dict]:
        """{field: {"value": seconds, "source": text}} for every cost field."""
        return {k: {"value": getattr(self, k), "source": self.sources[k]} for k in COSTS}

    def to_file_dict(self):
        d = {"format": FORMAT, "version": VERSION, "fields": self.inputs()}
        d.update({k: getattr(self, k) for k in META})
        d["cells"] = self.cells
        return d

    def save(self, path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_file_dict(), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def lines(self):
        """One printable line per cost field: value, what it prices, source."""
        out = []
        for k, (what, _) in COSTS.items():
            v = getattr(self, k)
            out.append("%-22s %10.3f us  %s%s: %s" % (
                k, v * 1e6, "ASSUMED " if self.assumed(k) else "", what, self.sources[k]))
        return out


def _check_cost(name, v, where):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError("%s: field %s must be a finite number of seconds, got %r"
                         % (where, name, v))
    hi = COSTS[name][1]
    if not 0 <= float(v) <= hi:
        raise ValueError("%s: field %s must be in [0, %g] s, got %r" % (where, name, hi, v))


def file_hash(path) -> str:
    """sha256 (hex) of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def load(path) -> Calibration:
    """Read a calibration file; ValueError naming the file and the field on
    anything malformed (the file is untrusted)."""
    where = "calibration file %s" % path
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ValueError("%s cannot be read: %s" % (where, e.strerror or e)) from None
    if size > MAX_FILE_BYTES:
        raise ValueError("%s is %d bytes, more than the %d a calibration file may have"
                         % (where, size, MAX_FILE_BYTES))
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_FILE_BYTES + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError("%s is not valid JSON: %s" % (where, e)) from None
    return from_file_dict(data, where)


def from_file_dict(data, where="a calibration") -> Calibration:
    if not isinstance(data, dict):
        raise ValueError("%s must be a JSON object, got %s" % (where, type(data).__name__))
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError("%s: format %r version %r, expected %r version %d"
                         % (where, data.get("format"), data.get("version"), FORMAT, VERSION))
    fields = data.get("fields")
    if not isinstance(fields, dict):
        raise ValueError("%s: 'fields' must be an object" % where)
    unknown = sorted(set(fields) - set(COSTS))
    if unknown:
        raise ValueError("%s: unknown field(s) %s" % (where, ", ".join(map(str, unknown))))
    values, sources = {}, {}
    for name in COSTS:
        entry = fields.get(name)
        if entry is None:
            raise ValueError("%s: field %s is missing" % (where, name))
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise ValueError("%s: field %s must be {\"value\": seconds, \"source\": text}, "
                             "got %r" % (where, name, entry))
        _check_cost(name, entry["value"], where)
        src = entry["source"]
        if not isinstance(src, str) or not src.strip() or len(src) > MAX_TEXT:
            raise ValueError("%s: field %s: source must be a non-empty text of at most %d "
                             "characters" % (where, name, MAX_TEXT))
        values[name] = float(entry["value"])
        sources[name] = src
    meta = {}
    for name in META:
        v = data.get(name)
        if not isinstance(v, str) or len(v) > MAX_TEXT:
            raise ValueError("%s: field %s must be a text of at most %d characters, got %r"
                             % (where, name, MAX_TEXT, v if not isinstance(v, str) else
                                v[:40] + "..."))
        meta[name] = v
    if meta["interface"] not in ("bitmap", "ring"):
        raise ValueError("%s: field interface must be 'bitmap' or 'ring', got %r"
                         % (where, meta["interface"]))
    if meta["accel"] not in ("kvm", "tcg"):
        raise ValueError("%s: field accel must be 'kvm' or 'tcg', got %r"
                         % (where, meta["accel"]))
    cells = data.get("cells", {})
    if not isinstance(cells, dict):
        raise ValueError("%s: field cells must be an object" % where)
    kw: Dict[str, object] = dict(values, **meta)
    return Calibration(sources=sources, cells=cells, **kw)  # type: ignore[arg-type]


# -- measuring ---------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown (no model name in /proc/cpuinfo)"


def qemu_version():
    from .process import qemu_binary
    try:
        out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return "unknown (%s)" % e
    return out.splitlines()[0].strip() if out else "unknown"


def _figures(res):
    keys = ("status", "total_time", "setup_time", "downtime", "dirty_sync_count",
            "transferred", "normal", "duplicate", "downtime_bytes", "guest_rate", "accel")
    return {k: getattr(res, k) for k in keys}


def _ring_costs():
    from ..costmodel import DEFAULT_SOURCES, CostModel
    cm = CostModel()
    return {
        "ring_harvest_s": (cm.ring_harvest_ns * 1e-9,
                           "assumed: the project's CostModel default ring_harvest_ns "
                           "(%s); QEMU does not report its reaper's time"
                           % DEFAULT_SOURCES["ring_harvest_ns"]),
        "ring_reset_s": (cm.ring_reset_ns * 1e-9,
                         "assumed: the project's CostModel default ring_reset_ns (%s); QEMU "
                         "does not report its reset time" % DEFAULT_SOURCES["ring_reset_ns"]),
    }


def _sync_cost(guest_size):
    from ..costmodel import CostModel
    cm = CostModel()
    npages = guest_size // PAGE
    # KVM's GET of the slot (words + ioctl) and QEMU's xchg walk over as many words
    s = (cm.kernel_get_ns(npages, 0) + -(-npages // 64) * cm.word_ns) * 1e-9
    return s, ("assumed: the project's CostModel (ioctl_ns %.0f + 2 x word_ns %.2f per 64 pages "
               "of a %d MiB guest: KVM's GET and QEMU's bitmap walk); query-migrate does not "
               "report the sync time" % (cm.ioctl_ns, cm.word_ns, guest_size // MiB))


RANDOM_RATE = 400_000     # pages/s: far more than first writes can go at
MIN_STOPPED_PAGES = 500   # pages in a downtime needed to price one


def _first_writes(samples, npages):
    """Per 100 ms interval of the bulk pass of a uniform guest (pages drawn
    uniformly from `npages`, all write-protected at the setup sync): (seconds,
    writes, first writes, normal pages sent, zero pages sent). First writes
    follow from the writes since setup W: npages x (1 - exp(-W / npages))
    distinct pages."""
    import math as _m
    s = [x for x in samples if x["status"] in ("setup", "active")]
    rows: list = []
    if not s:
        return rows
    base = s[0]["guest_pages"]
    for a, b in zip(s, s[1:]):
        if b["status"] != "active" or b["dirty_sync_count"] > 1:
            break
        wa, wb = a["guest_pages"] - base, b["guest_pages"] - base
        first = npages * (_m.exp(-wa / npages) - _m.exp(-wb / npages))
        rows.append((b["t"] - a["t"], wb - wa, first, b["normal"] - a["normal"],
                     b["duplicate"] - a["duplicate"]))
    return rows


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _random_costs(results, cfgs, v, put):
    """guest_fault_random_s and fault_contention_s from the uniform cells."""
    npages = cfgs["uniform-fault"].npages
    rows = _first_writes(results["uniform-fault"].samples, npages)
    # intervals where the guest got far less done than asked: it was fault bound
    bound = [(dt - w * v["guest_write_s"]) / f for dt, w, f, _, _ in rows
             if f >= 500 and w < 0.8 * RANDOM_RATE * dt]
    f = _median(bound)
    if f is not None:
        put("guest_fault_random_s", max(f, 0.0),
            "uniform fault cell (%d pages/s asked, 32 MiB/s), bulk pass: median over %d "
            "fault-bound 100 ms intervals of (time - writes x guest_write_s) / first writes"
            % (RANDOM_RATE, len(bound)))
    else:
        put("guest_fault_random_s", v["guest_fault_s"],
            "assumed: equal to guest_fault_s; the uniform fault cell had no fault-bound "
            "interval with 500 first writes")
    rows = _first_writes(results["uniform-busy"].samples, cfgs["uniform-busy"].npages)
    took = [(dt - n * v["send_normal_s"] - z * v["send_zero_s"]) / f
            for dt, w, f, n, z in rows if n >= 1000 and f >= 500]
    x = _median(took)
    if x is not None:
        put("fault_contention_s", max(x, 0.0),
            "uniform busy cell (unlimited): median over %d bulk-pass 100 ms intervals of "
            "(time - normal pages x send_normal_s - zero pages x send_zero_s) / the guest's "
            "first writes" % len(took))
    else:
        put("fault_contention_s", 0.0,
            "assumed: 0; the uniform busy cell had no bulk interval with 1000 normal pages "
            "and 500 first writes")


def calibration_configs(accel="auto"):
    """The dedicated calibration cells: {name: QemuConfig}."""
    base = dict(accel=accel, verify=False)
    return {
        "idle": QemuConfig(workload="idle", guest_size=1024 * MiB, bandwidth=UNLIMITED,
                           warmup=0.3, timeout=30.0, **base),
        # the grid's a-b guest (1 GiB, [1 MiB, 100 MiB)): its first 100 ms window
        # sends the range's pages (the bulk pass's normal-page cost), then the
        # windows say the rest fits in 10 s and it stops (a 128 MiB guest stops
        # before a whole window: too few pages to price one)
        "ab": QemuConfig(workload="ab", guest_size=1024 * MiB, bandwidth=UNLIMITED,
                         downtime_limit=10.0, warmup=1.0, timeout=30.0, **base),
        # 32 MiB/s, 1 ms: a bulk pass of ~3 s that never converges (cancelled): the
        # guest's second sweep after `migrate` faults on every page
        "ab-fault": QemuConfig(workload="ab", bandwidth=32 * MiB, downtime_limit=0.001,
                               warmup=0.3, timeout=5.0, **base),
        # 256 MiB/s, 1 ms: after a short bulk pass, syncs far closer together than a sweep
        "ab-iter": QemuConfig(workload="ab", bandwidth=256 * MiB, downtime_limit=0.001,
                              warmup=0.3, timeout=4.0, **base),
        # random writes far faster than faults allow, the sender nearly idle (32 MiB/s):
        # the guest's counter (per 100 us batch) times its first writes
        "uniform-fault": QemuConfig(workload="uniform", rate=RANDOM_RATE, bandwidth=32 * MiB,
                                    downtime_limit=0.001, warmup=0.3, timeout=1.5, **base),
        # the same guest with the sender busy (unlimited): what the faults take from it
        "uniform-busy": QemuConfig(workload="uniform", rate=RANDOM_RATE, bandwidth=UNLIMITED,
                                   downtime_limit=0.001, warmup=0.3, timeout=3.0, **base),
        # a uniform guest that completes after its bulk pass: its downtime sends pages
        # dirtied again, each sent before (the VM-stopped cost of a grid cell's pages)
        "uniform-stop": QemuConfig(workload="uniform", rate=30000, bandwidth=UNLIMITED,
                                   downtime_limit=0.3, warmup=1.0, timeout=10.0, **base),
    }


def calibrate_qemu(accel="auto", on_progress: Optional[Callable[[str], None]] = None,
                   run=None, repeat=3) -> Calibration:
    """Run the calibration cells `repeat` times (about 30 s a round) and return
    this machine's Calibration: each cost is the median of its value in each
    round (one round's noise is not the machine). `run` (tests): replaces
    runner.run_migration."""
    run = run or run_migration
    cfgs = calibration_configs(accel)
    rounds = []
    for i in range(repeat):
        results = {}
        for name, cfg in cfgs.items():
            results[name] = run(cfg)
            if on_progress:
                on_progress("calibration round %d/%d, cell %s: %s"
                            % (i + 1, repeat, name, results[name].status))
        rounds.append(costs_from_cells(results, cfgs))
    return median_calibration(rounds)


def median_calibration(rounds):
    """One Calibration from several rounds: per cost field the median value,
    its source the round whose value that is (with every round's value)."""
    if len(rounds) == 1:
        return rounds[0]
    v, src = {}, {}
    for name in COSTS:
        vals = sorted((getattr(r, name), i) for i, r in enumerate(rounds))
        val, i = vals[(len(vals) - 1) // 2]
        v[name] = val
        src[name] = ("median of %d rounds (%s us): %s"
                     % (len(rounds), ", ".join("%.3g" % (x * 1e6) for x, _ in vals),
                        rounds[i].sources[name]))
    first = rounds[0]
    cells = {"round %d" % (i + 1): r.cells for i, r in enumerate(rounds)}
    return Calibration(sources=src, machine=first.machine, date=first.date,
                       accel=first.accel, qemu_version=first.qemu_version,
                       interface=first.interface, cells=cells, **v)


def costs_from_cells(results, cfgs) -> Calibration:
    """The Calibration from the calibration cells' results (QemuResult-like)."""
    accels = {name: r.accel for name, r in results.items()}
    if len(set(accels.values())) != 1:
        raise ValueError("the calibration cells ran under different accelerators (%s; %s); "
                         "choose one with --accel"
                         % (", ".join("%s %s" % kv for kv in accels.items()),
                            "; ".join(r.accel_note for r in results.values())))
    idle, ab = results["idle"], results["ab"]
    v: Dict[str, float] = {}
    src: Dict[str, str] = {}

    def put(name, value, source):
        v[name], src[name] = float(value), source

    # zero pages: the idle cell's running time over its pages (almost all zero)
    pages = idle.normal + idle.duplicate
    running = max(idle.total_time - idle.downtime - idle.setup_time, 1e-6)
    put("send_zero_s", running / max(pages, 1),
        "idle cell: (total-time - downtime - setup-time) %.0f ms / %d pages (%d zero)"
        % (running * 1e3, pages, idle.duplicate))
    # normal pages while running: the a-b cell's bulk-pass samples
    normal_s, how = bulk_normal_cost(ab.samples, v["send_zero_s"])
    if normal_s is None:
        pre = max(ab.total_time - ab.downtime - ab.setup_time, 1e-6)
        n_pre = max(ab.normal - ab.downtime_bytes // WIRE_PAGE_RECORD, 1)
        whole = (pre - v["send_zero_s"] * ab.duplicate) / n_pre
        if whole > 1e-7:
            normal_s = whole
            how = ("a-b cell: its whole precopy phase %.0f ms less its zero pages, over its "
                   "%d normal pages (%s)" % (pre * 1e3, n_pre, how))
    send_normal = (normal_s, how)      # None: decided below, from the stopped cost
    # with the VM stopped: downtime = overhead + pages x cost. The pages a grid
    # cell sends in its downtime went out before (the destination has touched
    # their memory), so the uniform stop cell, whose downtime holds pages dirtied
    # again after the bulk pass, prices them; the a-b cell's downtime holds first
    # sends (the fallback)
    n_i = idle.downtime_bytes // WIRE_PAGE_RECORD
    stop = results.get("uniform-stop")
    n_s = stop.downtime_bytes // WIRE_PAGE_RECORD if stop is not None else 0
    n_a = ab.downtime_bytes // WIRE_PAGE_RECORD
    if n_s >= MIN_STOPPED_PAGES and stop.downtime > idle.downtime:
        stopped = (stop.downtime - idle.downtime) / max(n_s - n_i, 1)
        put("send_normal_stopped_s", stopped,
            "uniform stop cell against the idle cell: (downtime %.1f - %.1f ms) / (%d - %d "
            "normal pages in the downtime, each sent before)"
            % (stop.downtime * 1e3, idle.downtime * 1e3, n_s, n_i))
        put("downtime_overhead_s", max(idle.downtime - n_i * stopped, 0.0),
            "idle cell: downtime %.1f ms less its %d normal pages at send_normal_stopped_s"
            % (idle.downtime * 1e3, n_i))
    elif n_a > n_i + 100 and ab.downtime > idle.downtime:
        stopped = (ab.downtime - idle.downtime) / (n_a - n_i)
        put("send_normal_stopped_s", stopped,
            "a-b cell against the idle cell: (downtime %.1f - %.1f ms) / (%d - %d normal pages "
            "in the downtime; first sends: the uniform stop cell had %d pages in its downtime)"
            % (ab.downtime * 1e3, idle.downtime * 1e3, n_a, n_i, n_s))
        put("downtime_overhead_s", max(idle.downtime - n_i * stopped, 0.0),
            "idle cell: downtime %.1f ms less its %d normal pages at send_normal_stopped_s"
            % (idle.downtime * 1e3, n_i))
    else:
        put("downtime_overhead_s", idle.downtime,
            "idle cell: its downtime (%d normal pages in it)" % n_i)
        if send_normal[0] is None:
            raise ValueError("the a-b calibration cell priced no normal page, neither "
                             "running (%s) nor stopped (downtime %.1f ms, %d pages)"
                             % (send_normal[1], ab.downtime * 1e3, n_a))
        put("send_normal_stopped_s", send_normal[0],
            "assumed: equal to send_normal_s; neither the uniform stop cell's downtime (%d "
            "pages) nor the a-b cell's (%.1f ms, %d pages) can price a page"
            % (n_s, ab.downtime * 1e3, n_a))
    if send_normal[0] is not None:
        put("send_normal_s", send_normal[0], send_normal[1])
    else:
        put("send_normal_s", v["send_normal_stopped_s"],
            "assumed: equal to send_normal_stopped_s; the a-b cell's precopy phase cannot "
            "price a normal page (%s; its zero pages at send_zero_s take all its time)"
            % send_normal[1])
    put("setup_s", (idle.setup_time + ab.setup_time) / 2,
        "mean setup-time of the idle (%.1f ms) and a-b (%.1f ms) cells"
        % (idle.setup_time * 1e3, ab.setup_time * 1e3))
    if ab.guest_rate <= 0:
        raise ValueError("the a-b calibration cell's guest did not write during its warm-up")
    put("guest_write_s", 1.0 / ab.guest_rate,
        "a-b cell: 1 / the guest's warm-up sweep rate %.0f pages/s (before migrate: no dirty "
        "logging)" % ab.guest_rate)
    rate, kind = fault_rate_how(results["ab-fault"], cfgs["ab-fault"].npages)
    if rate:
        fault = max(1.0 / rate - v["guest_write_s"], 0.0)
        put("guest_fault_s", fault,
            "a-b fault cell (32 MiB/s), bulk pass: 1 / %.0f first writes/s (%s) - "
            "guest_write_s%s"
            % (rate, kind, "" if kind == "the first sweep over protected pages timed" else
               "; a lower bound of the cost"))
    else:
        from ..costmodel import CostModel
        put("guest_fault_s", CostModel().write_fault_ns * 1e-9,
            "assumed: the project's CostModel write_fault_ns; the a-b fault cell had no "
            "active sample to time a sweep")
    rate_it = iter_fault_rate(results["ab-iter"], cfgs["ab-iter"].npages)
    if rate_it:
        put("guest_fault_iter_s", max(1.0 / rate_it - v["guest_write_s"], 0.0),
            "a-b iterative cell (256 MiB/s, 1 ms): 1 / %.0f page writes/s after the second "
            "sync, every one a first write after a re-protection - guest_write_s" % rate_it)
    else:
        put("guest_fault_iter_s", v["guest_fault_s"],
            "assumed: equal to guest_fault_s; the a-b iterative cell saw no whole sweep with "
            "syncs closer together than a sweep")
    _random_costs(results, cfgs, v, put)
    s, how = _sync_cost(1024 * MiB)
    put("sync_s", s, how)
    for k, (val, how) in _ring_costs().items():
        put(k, val, how)
    cells = {name: _figures(r) for name, r in results.items()}
    for name, c in cells.items():
        c["config"] = {k: val for k, val in dataclasses.asdict(cfgs[name]).items()
                       if k in ("workload", "guest_size", "start", "end", "bandwidth",
                                "downtime_limit", "timeout")}
    return Calibration(sources=src, machine=cpu_model(),
                       date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       accel=ab.accel, qemu_version=qemu_version(), interface="bitmap",
                       cells=cells, **v)
