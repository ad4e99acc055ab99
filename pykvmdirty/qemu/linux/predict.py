"""Blind predictions of the Linux guest's migrations: the one loop
(migration/controller.py, ``qemu-7.2`` policy) replaying the guest's measured
workload model (model.py) and priced from one calibration.

Inputs, and nothing of a judged run:

- the model: the trace of the guest's memory at the start and its
  windows' pages (prefill, repeat, throttle: see model.py);
- the calibration (:func:`calibrate`): ONE migration of the same guest and
  workload at a setting no judged cell uses (``CALIBRATION_CELL``:
  unlimited bandwidth, downtime-limit 300 ms), over a base calibration of
  this machine's TCG QEMU (``pykvmdirty calibrate --qemu --accel tcg``)
  that gives the ratios the one run cannot separate:

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
  * the rest (guest write and fault costs, sync, ring) from the base.

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
from ..figures import KEYS
from ..predict import NS, STEP_S, cost_model, sender_prices

UNLIMITED = 64 << 30
#: the calibration run's setting (never a judged cell's)
CALIBRATION_CELL: Dict[str, Any] = dict(bandwidth=UNLIMITED, downtime_limit=0.3,
                                        auto_converge=False)
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
    where = "the Linux calibration run (%s, %d MiB, unlimited, 300 ms)" % (
        config.workload, config.guest_size >> 20)
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


def predict(config: QemuConfig, cal: Calibration, trace) -> dict:
    """The loop's figures for this cell under QEMU's names (as qemu/predict.py)."""
    cfg = loop_config(config, cal, trace)
    r = migrate(cfg, sink="null")
    zero = r.total("zero_pages")
    out = dict(status=r.status, total_time=r.total_ns / NS, setup_time=r.setup_ns / NS,
               downtime=r.downtime_ns / NS, expected_downtime=r.expected_downtime_ns / NS,
               dirty_sync_count=r.dirty_sync_count, transferred=r.bytes,
               normal=r.total("pages_sent") - zero, duplicate=zero,
               throttle_max=r.final_throttle_pct)
    assert set(KEYS) <= set(out)
    out["passes"] = [dict(kind=p.kind, dirty_found=p.dirty_found, sent=p.pages_sent,
                          zero=p.zero_pages, duration=p.duration_ns / NS,
                          throttle=p.throttle_pct, guest_writes=p.guest_writes)
                     for p in r.passes]
    out["inputs"] = cal.inputs()
    out["loop"] = dict(backend=cfg.backend, strategy=cfg.strategy, workload="trace",
                       link_bandwidth=cfg.link_bandwidth, page_ns=cfg.costs.page_ns)
    return out
