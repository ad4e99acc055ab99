"""Blind predictions of the Linux guest's migrations: the one loop
(migration/controller.py, ``qemu-7.2`` policy) replaying the guest's measured
workload model (model.py) and priced from one calibration.

Inputs, and nothing of a judged run:

- the model: the trace of the guest's memory at the start and its
  windows' pages (prefill, repeat, throttle: see model.py);
- the calibration: ONE migration of the same guest and workload at a
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
  * the guest's speed while it is migrated (:func:`guest_speed`): the model
    was measured with the guest alone; the loop replays the calibration
    cell with the model at speed S (the trace's meta ``"speed"``: its time
    runs at S x the clock's) and S is the one whose replay sends as many
    normal pages as the run did (bisection). Every judged cell replays the
    model at that S. (QEMU's dirty-pages-rate does not measure it: in a
    migration that keeps iterating every sync finds about what the sender
    sent, so the rate is the send rate; the guest's heartbeat is a sleep
    loop, its rate barely moves.)

The loop: one memslot of guest_size, TCG's dirty bitmap without manual
protect (strategy global), the sender prices as in qemu/predict.py, the
workload the trace (the generator idle), no warm-up (the trace's prefill is
the guest's memory when the migration starts).
"""
import dataclasses
from typing import Any, Dict

from ...migration.config import MigrationConfig
from ...migration.run import migrate
from ...costmodel import CostModel
from ..calibration import Calibration
from ..config import QemuConfig
from ..predict import STEP_S, cost_model, report_figures, sender_prices

UNLIMITED = 64 << 30
#: the calibration run's setting (never a judged cell's)
CALIBRATION_CELL: Dict[str, Any] = dict(bandwidth=UNLIMITED, downtime_limit=0.02,
                                        auto_converge=False)
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


def with_speed(trace, speed):
    """The same model replayed at `speed` (trace meta ``"speed"``)."""
    from ...migration.trace import Trace
    return Trace(trace.npages, trace.t_ns, trace.offsets, trace.gfns, trace.vcpus,
                 dict(trace.meta, speed=float(speed)))


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


def guest_speed(run, cal: Calibration, config: QemuConfig, trace) -> dict:
    """The guest's speed while it is migrated, from the calibration run
    alone (a dict of its QemuResult fields; `config` its settings) and the
    model: the S at which the loop, replaying the calibration cell with the
    model at speed S and the costs `cal` (priced from the same run), sends
    as many normal pages as the run did. A dict: ``speed``, the run's and the
    replay's figures, how it was found."""
    target = int(run["normal"])

    def replay(s):
        return migrate(loop_config(config, cal, with_speed(trace, s)), sink="null")

    def pages_at(s):
        r = replay(s)
        return r.total("pages_sent") - r.total("zero_pages")
    speed, tried = fit_speed(target, pages_at)
    r = replay(speed)
    alone = trace.meta.get("dirty_rate_pages_s", 0)
    return dict(
        speed=speed, run_normal=target, run_syncs=int(run["dirty_sync_count"]),
        run_status=run["status"], replay_normal=r.total("pages_sent") - r.total("zero_pages"),
        replay_syncs=r.dirty_sync_count, replay_status=r.status,
        tried=[[s, int(n)] for s, n in tried],
        source=("the Linux calibration run (%s): %d normal pages in %d syncs; the loop replays "
                "that cell with the model (measured alone: %.0f pages/s) at speed %.3f for the "
                "same pages (%d in %d syncs)"
                % (run["status"], target, int(run["dirty_sync_count"]), alone, speed,
                   r.total("pages_sent") - r.total("zero_pages"), r.dirty_sync_count)))


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


def predict(config: QemuConfig, cal: Calibration, trace, speed: float = 1.0) -> dict:
    """The loop's figures for this cell under QEMU's names (as qemu/predict.py),
    the model replayed at the guest's `speed` (:func:`guest_speed`)."""
    cfg = loop_config(config, cal, with_speed(trace, speed) if speed != 1 else trace)
    out = report_figures(migrate(cfg, sink="null"))
    out["inputs"] = cal.inputs()
    out["guest_speed"] = speed
    out["loop"] = dict(backend=cfg.backend, strategy=cfg.strategy, workload="trace",
                       link_bandwidth=cfg.link_bandwidth, page_ns=cfg.costs.page_ns)
    return out
