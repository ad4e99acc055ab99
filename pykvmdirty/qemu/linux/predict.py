"""Blind predictions of the Linux guest's migrations: the one loop
(migration/controller.py, ``qemu-7.2`` policy) replaying the guest's measured
workload model (model.py), priced from one calibration run and its guest's
speed fitted from two.

Inputs, and nothing of a judged run:

- the model: the trace of the guest's memory at the start and its
  windows' pages (prefill, repeat, throttle: see model.py);
- the calibration: a migration of the same guest and workload at a
  setting no judged cell uses (``CALIBRATION_CELL``: unlimited bandwidth,
  downtime-limit 20 ms: QEMU syncs again after its bulk pass, so the run
  shows how much the guest dirties while it is migrated), over a base
  calibration of this machine's TCG QEMU (``pykvmdirty calibrate --qemu
  --accel tcg``) that gives the ratios the one run cannot separate:

  * send_normal_s: the run's running time (total - setup - downtime) over
    its pre-copy pages, a zero page priced at the base's zero/normal
    ratio; send_zero_s = that ratio x send_normal_s;
  * send_normal_stopped_s: the run's downtime less the base's
    downtime_overhead_s (the same pc machine and devices), over the normal
    pages sent stopped (downtime-bytes / 4104); fewer than 500 of them: the
    base's stopped/running ratio x send_normal_s;
  * setup_s: the run's setup-time;
  * fault_contention_s 0: the replayed writes are the guest's measured
    pages, the cost of its faults is already in the rates measured;
  * the rest (guest write and fault costs, sync, ring) from the base;
  * the guest's speed while it is migrated (:func:`guest_speed`), from
    that run and a second one (below), which
    depends on what the sender is doing. The model was measured with the
    guest alone. While it is migrated its vCPU shares the host's two cores
    with QEMU's sender and the destination QEMU: while the sender works
    (sending, syncing) the guest gets less of the host than while the sender
    sleeps on its rate limit. One speed fitted with the sender flat out
    makes a rate-limited guest (busy a third of the time at 48 MiB/s) far
    too slow. The rule: in each interval of the replay the trace's time runs
    at ``S(w) = S_busy x (1 - w) + S_idle x w``, w the share of the interval
    the loop's sender spent waiting for its rate limit (trace meta
    ``"speed"`` and ``"speed_idle"``; migration/trace.py). Linear in w:
    the two ends are what the host gives the guest with the sender always
    working or always asleep, and in between the shares mix.

    Two calibration runs, both at settings no judged cell uses, give the
    two ends (:data:`CALIBRATION_CELLS`):

    1. unlimited bandwidth, downtime-limit 20 ms: the loop's sender never
       waits (w = 0), so this run alone fixes S_busy: the S whose replay
       sends as many normal pages as the run did (bisection on log S, the
       replay's pages grow with S);
    2. 32 MiB/s, downtime-limit 20 ms, auto-converge: the sender waits most
       of the time. Auto-converge, because without it neither measured
       workload converges at 32 MiB/s and a run cancelled at its timeout
       sends bandwidth x time whatever the guest's speed; with it the run
       completes and its normal pages tell how fast the guest dirtied.
       With S_busy fixed, S_idle is the candidate (log-spaced, a factor
       sqrt 2 apart in [1/16, 4]) whose replay's normal pages are nearest
       the run's (in log ratio; a scan, not a bisection: with the throttle
       in play the replay's pages need not grow with the speed).

    Every judged cell replays the model with both. Nothing of a judged run
    enters either fit. (QEMU's dirty-pages-rate does not measure the speed:
    in a migration that keeps iterating every sync finds about what the
    sender sent, so the rate is the send rate; the guest's heartbeat is a
    sleep loop, its rate barely moves.)

The loop: one memslot of guest_size, TCG's dirty bitmap without manual
protect (strategy global), the sender prices as in qemu/predict.py, the
workload the trace (the generator idle), no warm-up (the trace's prefill is
the guest's memory when the migration starts).
"""
import dataclasses
import math
from typing import Any, Dict

from ...migration.config import MigrationConfig
from ...migration.run import migrate
from ...costmodel import CostModel
from ..calibration import Calibration
from ..config import QemuConfig
from ..predict import STEP_S, cost_model, report_figures, sender_prices

UNLIMITED = 64 << 30
#: the calibration run's setting (never a judged cell's): its sender never
#: waits, so it gives S_busy (and the send prices)
CALIBRATION_CELL: Dict[str, Any] = dict(bandwidth=UNLIMITED, downtime_limit=0.02,
                                        auto_converge=False)
#: the second calibration run (never a judged cell's): the sender mostly
#: waits on its rate limit, so it gives S_idle
CALIBRATION_IDLE_CELL: Dict[str, Any] = dict(bandwidth=32 << 20, downtime_limit=0.02,
                                             auto_converge=True)
CALIBRATION_CELLS = (CALIBRATION_CELL, CALIBRATION_IDLE_CELL)
#: the idle speeds tried (a factor sqrt 2 apart)
IDLE_SPEEDS = tuple(2.0 ** (k / 2) for k in range(-8, 5))
#: the range the guest's speed is searched in (a factor on the model's time)
SPEED_RANGE = (1 / 64, 4.0)
PAGE_RECORD = 4096 + 8
MIN_STOPPED_PAGES = 500


def sync_cost(guest_size):
    """(seconds, source) of one bitmap sync: assumed from the CostModel, as the
    firmware calibration does (query-migrate does not report it)."""
    cm = CostModel()
    npages = guest_size // 4096
    s = (cm.kernel_get_ns(npages, 0) + -(-npages // 64) * cm.word_ns) * 1e-9
    return s, ("assumed: the project's CostModel (the dirty log's GET and QEMU's bitmap walk "
               "of a %d MiB guest); query-migrate does not report the sync time"
               % (guest_size >> 20))


def calibration_config(config: QemuConfig) -> QemuConfig:
    return dataclasses.replace(config, **CALIBRATION_CELL)


def idle_calibration_config(config: QemuConfig) -> QemuConfig:
    return dataclasses.replace(config, **CALIBRATION_IDLE_CELL)


def costs_from_run(run, base: Calibration, config: QemuConfig) -> Calibration:
    """The Linux calibration from one run's figures (a dict of QemuResult
    fields) over the base calibration."""
    setup = float(run["setup_time"])
    down = float(run["downtime"])
    running = float(run["total_time"]) - setup - down
    stopped_pages = int(run["downtime_bytes"]) // PAGE_RECORD
    pre_normal = max(0, int(run["normal"]) - stopped_pages)
    zeros = int(run["duplicate"])
    ratio = base.send_zero_s / base.send_normal_s
    where = ("the Linux calibration run (%s, %d MiB, unlimited, %g ms)"
             % (config.workload, config.guest_size >> 20, config.downtime_limit * 1000))
    if running <= 0 or pre_normal + ratio * zeros <= 0:
        raise ValueError("the calibration run sent nothing while running (total %.3f s, "
                         "setup %.3f s, downtime %.3f s): cannot price a page"
                         % (float(run["total_time"]), setup, down))
    normal = running / (pre_normal + ratio * zeros)
    src = dict(base.sources)
    f = {k: getattr(base, k) for k in ("guest_write_s", "guest_fault_s", "guest_fault_iter_s",
                                       "guest_fault_random_s", "ring_harvest_s",
                                       "ring_reset_s")}
    src["send_normal_s"] = ("%s: running time %.3f s over %d normal + %d zero pages (a zero page "
                            "at the base's ratio %.4f)" % (where, running, pre_normal, zeros,
                                                           ratio))
    src["send_zero_s"] = "the base's zero/normal ratio x send_normal_s"
    stopped_from_run = stopped_pages >= MIN_STOPPED_PAGES and down > base.downtime_overhead_s
    if stopped_from_run:
        stopped = (down - base.downtime_overhead_s) / stopped_pages
        src["send_normal_stopped_s"] = ("%s: downtime %.1f ms less the base's overhead, over %d "
                                        "pages sent stopped" % (where, down * 1000,
                                                                stopped_pages))
    else:
        stopped = normal * base.send_normal_stopped_s / base.send_normal_s
        src["send_normal_stopped_s"] = ("the base's stopped/running ratio x send_normal_s (the "
                                        "run sent %d pages stopped)" % stopped_pages)
    src["downtime_overhead_s"] = "the base calibration's (the same pc machine and devices)"
    src["setup_s"] = "%s: setup-time" % where
    src["fault_contention_s"] = ("0: the model replays the guest's measured pages; its faults' "
                                 "cost is in the rates measured")
    sync, src["sync_s"] = sync_cost(config.guest_size)
    return Calibration(
        send_normal_s=normal, send_zero_s=ratio * normal, send_normal_stopped_s=stopped,
        downtime_overhead_s=base.downtime_overhead_s, setup_s=setup, fault_contention_s=0.0,
        sync_s=sync, sources=src, machine=base.machine, date=run.get("started_at", ""),
        accel="tcg", qemu_version=base.qemu_version, interface="bitmap",
        cells={"linux calibration": {k: run[k] for k in run if k != "samples"}}, **f)


def with_speed(trace, speed, speed_idle=None):
    """The same model replayed at `speed` while the sender works and
    `speed_idle` (default: the same) while it waits (trace meta ``"speed"``,
    ``"speed_idle"``)."""
    from ...migration.trace import Trace
    meta = dict(trace.meta, speed=float(speed))
    meta["speed_idle"] = float(speed if speed_idle is None else speed_idle)
    return Trace(trace.npages, trace.t_ns, trace.offsets, trace.gfns, trace.vcpus, meta)


def fit_nearest(target, pages_at, candidates=IDLE_SPEEDS):
    """The candidate whose pages_at(candidate) is nearest `target` in log
    ratio (the first of equals): (S, [(S tried, pages)])."""
    tried = [(s, pages_at(s)) for s in candidates]

    def miss(item):
        return abs(math.log(max(item[1], 1) / max(target, 1)))
    return min(tried, key=miss)[0], tried


def fit_speed(target, pages_at, lo=SPEED_RANGE[0], hi=SPEED_RANGE[1], steps=12):
    """The speed S in [lo, hi] whose replay sends `target` normal pages
    (pages_at(S), which grows with S), by bisection on log S:
    (S, [(S tried, pages)]). A target outside [pages_at(lo), pages_at(hi)]
    gives that bound."""
    tried = []

    def at(s):
        n = pages_at(s)
        tried.append((s, n))
        return n
    if at(hi) <= target:
        return hi, tried
    if at(lo) >= target:
        return lo, tried
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5, tried


def _normal(r):
    return r.total("pages_sent") - r.total("zero_pages")


def guest_speed(run, cal: Calibration, config: QemuConfig, trace, idle_run=None,
                idle_config=None) -> dict:
    """The guest's speed while it is migrated, from the calibration runs
    alone (dicts of their QemuResult fields; `config`, `idle_config` their
    settings) and the model. S_busy: the S at which the loop, replaying the
    first calibration cell (its sender never waits) with the model at speed
    S and the costs `cal`, sends as many normal pages as the run did. S_idle
    (with `idle_run`; else S_idle = S_busy): with S_busy fixed, the
    candidate whose replay of the second cell sends nearest the normal
    pages that run sent. A dict: ``speed`` (S_busy), ``speed_idle``, the
    runs' and the replays' figures, how they were found."""
    target = int(run["normal"])

    def replay(s, s_idle=None, cfg=config):
        return migrate(loop_config(cfg, cal, with_speed(trace, s, s_idle)), sink="null")

    def pages_at(s):
        return _normal(replay(s))
    speed, tried = fit_speed(target, pages_at)
    r = replay(speed)
    alone = trace.meta.get("dirty_rate_pages_s", 0)
    out = dict(
        speed=speed, speed_idle=speed, run_normal=target,
        run_syncs=int(run["dirty_sync_count"]), run_status=run["status"],
        replay_normal=_normal(r), replay_syncs=r.dirty_sync_count, replay_status=r.status,
        tried=[[s, int(n)] for s, n in tried],
        source=("the Linux calibration run (%s): %d normal pages in %d syncs; the loop replays "
                "that cell with the model (measured alone: %.0f pages/s) at speed %.3f for the "
                "same pages (%d in %d syncs)"
                % (run["status"], target, int(run["dirty_sync_count"]), alone, speed,
                   _normal(r), r.dirty_sync_count)))
    if idle_run is None:
        return out
    if idle_config is None:
        raise ValueError("the second calibration run needs its settings (idle_config)")
    idle_target = int(idle_run["normal"])

    def idle_pages_at(s_idle):
        return _normal(replay(speed, s_idle, idle_config))
    s_idle, tried_idle = fit_nearest(idle_target, idle_pages_at)
    ri = replay(speed, s_idle, idle_config)
    out.update(
        speed_idle=s_idle, idle_run_normal=idle_target,
        idle_run_syncs=int(idle_run["dirty_sync_count"]), idle_run_status=idle_run["status"],
        idle_replay_normal=_normal(ri), idle_replay_syncs=ri.dirty_sync_count,
        idle_replay_status=ri.status, idle_tried=[[s, int(n)] for s, n in tried_idle],
        idle_source=("the second Linux calibration run (%.0f MiB/s, %g ms%s; %s): %d normal "
                     "pages in %d syncs; with S_busy %.3f the loop's replay at S_idle %.3f sends "
                     "%d in %d syncs (the nearest of %d idle speeds tried)"
                     % (idle_config.bandwidth / (1 << 20), idle_config.downtime_limit * 1000,
                        ", auto-converge" if idle_config.auto_converge else "",
                        idle_run["status"], idle_target, int(idle_run["dirty_sync_count"]),
                        speed, s_idle, _normal(ri), ri.dirty_sync_count, len(tried_idle))))
    return out


def loop_config(config: QemuConfig, cal: Calibration, trace) -> MigrationConfig:
    if (config.throttle_initial, config.throttle_increment) != (20, 10):
        raise ValueError("the qemu-7.2 policy models QEMU's default throttle steps (20 %, +10 %)")
    if config.xbzrle or config.multifd:
        raise ValueError("xbzrle and multifd are not modelled by the loop")
    if trace.npages != config.guest_size // 4096:
        raise ValueError("the workload model covers %d pages but the guest has %d (measure it "
                         "with the same --guest-size)" % (trace.npages, config.guest_size // 4096))
    _, link = sender_prices(cal.send_zero_s, cal.send_normal_s)
    return MigrationConfig(
        guest_size=config.guest_size, slots=1, backend="flat", strategy="global",
        workload="idle", rate=0, trace=trace, mode="virtual", vcpus=1,
        bandwidth=config.bandwidth, link_bandwidth=link, downtime_limit=config.downtime_limit,
        max_wait=0.05, max_passes=10**6, auto_converge=config.auto_converge,
        zero_pages="header", populate=0, step=STEP_S,
        cost_model=cost_model(cal, "bitmap", "uniform"), verify=False,
        duration_limit=config.timeout, policy="qemu-7.2", warmup=0)


def predict(config: QemuConfig, cal: Calibration, trace, speed: float = 1.0,
            speed_idle=None) -> dict:
    """The loop's figures for this cell under QEMU's names (as qemu/predict.py),
    the model replayed at the guest's `speed` while the sender works and
    `speed_idle` (default: `speed`) while it waits (:func:`guest_speed`)."""
    s_idle = speed if speed_idle is None else speed_idle
    cfg = loop_config(config, cal, with_speed(trace, speed, s_idle)
                      if (speed, s_idle) != (1, 1) else trace)
    out = report_figures(migrate(cfg, sink="null"))
    out["inputs"] = cal.inputs()
    out["guest_speed"] = speed
    out["guest_speed_idle"] = s_idle
    out["loop"] = dict(backend=cfg.backend, strategy=cfg.strategy, workload="trace",
                       link_bandwidth=cfg.link_bandwidth, page_ns=cfg.costs.page_ns)
    return out
