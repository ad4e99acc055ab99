"""What QEMU 7.2 will do with a cell, predicted before it runs: the one
migration loop (migration/controller.py) under the ``qemu-7.2`` policy, on
the dirty log QEMU's KVM uses, priced from one calibration file.

The cell (a QemuConfig) and the calibration (calibration.Calibration) are
the only inputs: nothing is read from a run of the cell itself. How each
piece maps:

- guest: ``guest_size`` of RAM in one memslot, one vCPU; the workload writes
  [start, end) as the firmware guest does (ab: the a-b sweep, QEMU's
  migration-test; uniform and hotspot: paced random writes), and runs
  ``warmup`` seconds before the migration starts, filling its pages;
- the a-b guest without a rate runs as fast as its vCPU allows: its nominal
  rate is 1 / guest_write_s (the calibrated native sweep), and what it gets
  done under dirty logging follows from the vCPU time each first write
  costs it (guest_fault_s, the cost model's write_fault_ns);
- dirty interface: ``bitmap`` is KVM's log with manual protect and QEMU's
  clear_bmap (strategy chunked-clear, 1 GiB chunks); ``ring`` is the dirty
  ring (4096 entries, QEMU's reaper on ring-full exits), priced with the
  calibration's harvest and reset costs; under TCG there is no KVM log: the
  bitmap without manual protect (strategy global);
- sender: a zero page costs send_zero_s, a normal page send_normal_s while
  the guest runs and send_normal_stopped_s when it is stopped (the virtual
  clock's page_ns and link bandwidth are solved from those two figures); each
  guest write fault takes fault_contention_s from the sender while the guest
  runs (this 2-core host: vCPU, sender and destination share it);
- a first write costs the guest guest_fault_s (a sweep: the a-b guest; after
  the bulk pass guest_fault_iter_s) or guest_fault_random_s (uniform,
  hotspot: both phases), as calibrated for that pattern;
  setup_s, sync_s and downtime_overhead_s as calibrated;
- QEMU's own RAM blocks besides the guest's RAM (the 64 KiB BIOS, 128 KiB of
  option ROM) are left out: 48 pages.
"""
import dataclasses

from ..costmodel import CostModel
from ..bindings.constants import WIRE_PAGE_RECORD, WIRE_ZERO_RECORD
from ..migration.config import MigrationConfig
from ..migration.run import migrate
from ..units import NS
from .figures import KEYS

RING_ENTRIES = 4096              # -accel kvm,dirty-ring-size=4096
CLEAR_SHIFT = 18                 # x-clear-bitmap-shift default: 1 GiB chunks
STEP_S = 0.002                   # the virtual clock's workload interval
WORKLOADS = {"ab": "migration-test", "uniform": "uniform", "hotspot": "hotspot",
             "idle": "idle"}
INTERFACES = ("bitmap", "ring")


def sender_prices(zero_s, normal_s):
    """(page_ns, link bytes/s) whose zero and normal records cost zero_s and
    normal_s on the virtual clock (page_ns + record bytes / link)."""
    extra = normal_s - zero_s
    if extra <= 0:
        return normal_s * NS, 0
    link = (WIRE_PAGE_RECORD - WIRE_ZERO_RECORD) / extra
    return max(0.0, zero_s * NS - WIRE_ZERO_RECORD * NS / link), int(round(link))


def cost_model(cal, interface, workload="ab"):
    """The one cost model, with the calibrated prices of this machine (a first
    write costs the guest what it cost the calibration guest with the same
    access pattern: a sweep, or random pages)."""
    page_ns, _ = sender_prices(cal.send_zero_s, cal.send_normal_s)
    sweep = workload == "ab"
    fault = cal.guest_fault_s if sweep else cal.guest_fault_random_s
    again = cal.guest_fault_iter_s if sweep else cal.guest_fault_random_s
    fields = dict(page_ns=page_ns, guest_write_ns=cal.guest_write_s * NS,
                  write_fault_ns=fault * NS, write_fault_again_ns=again * NS,
                  fault_contention_ns=cal.fault_contention_s * NS,
                  setup_ns=cal.setup_s * NS,
                  sync_ns=cal.sync_s * NS, downtime_overhead_ns=cal.downtime_overhead_s * NS,
                  stopped_page_ns=cal.send_normal_stopped_s * NS)
    if interface == "ring":
        fields.update(ring_harvest_ns=cal.ring_harvest_s * NS,
                      ring_reset_ns=cal.ring_reset_s * NS)
    return dataclasses.replace(CostModel(), **fields)


def loop_config(config, cal, interface="bitmap", accel=None):
    """The MigrationConfig the loop runs for this cell."""
    if interface not in INTERFACES:
        raise ValueError("interface must be one of %s, got %r"
                         % (", ".join(INTERFACES), interface))
    if (config.throttle_initial, config.throttle_increment) != (20, 10):
        raise ValueError("the qemu-7.2 policy models QEMU's default throttle steps "
                         "(20 %%, +10 %%), got %d, %d"
                         % (config.throttle_initial, config.throttle_increment))
    if config.xbzrle or config.multifd:
        raise ValueError("xbzrle and multifd are not modelled by the loop")
    accel = accel or config.accel
    kind = WORKLOADS[config.workload]
    rate = config.rate
    if kind == "migration-test" and not rate:
        rate = int(round(1.0 / cal.guest_write_s))   # unpaced: the native sweep rate
    _, link = sender_prices(cal.send_zero_s, cal.send_normal_s)
    if interface == "ring":
        backend, strategy = "ring", "ring"
    elif accel == "tcg":
        backend, strategy = "flat", "global"
    else:
        backend, strategy = "flat", "chunked-clear"
    return MigrationConfig(
        guest_size=config.guest_size, slots=1, backend=backend, strategy=strategy,
        workload=kind, rate=rate if kind != "idle" else 0,
        hot_fraction=config.hot_fraction, hot_share=config.hot_share, seed=config.seed,
        mode="virtual", vcpus=1, bandwidth=config.bandwidth, link_bandwidth=link,
        downtime_limit=config.downtime_limit, max_wait=0.05, max_passes=10**6,
        auto_converge=config.auto_converge, zero_pages="header", clear_shift=CLEAR_SHIFT,
        populate=0, step=STEP_S, cost_model=cost_model(cal, interface, config.workload),
        ring_entries=RING_ENTRIES, verify=False, duration_limit=config.timeout,
        policy="qemu-7.2", warmup=config.warmup, workload_start=config.start,
        workload_end=config.end)


def report_figures(r):
    """A loop run's report under QEMU's names (seconds, bytes, pages: KEYS),
    plus its dirty rate, the guest's figures and "passes" (per sync)."""
    zero = r.total("zero_pages")
    out = dict(status=r.status, total_time=r.total_ns / NS, setup_time=r.setup_ns / NS,
               downtime=r.downtime_ns / NS, expected_downtime=r.expected_downtime_ns / NS,
               dirty_sync_count=r.dirty_sync_count, transferred=r.bytes,
               normal=r.total("pages_sent") - zero, duplicate=zero,
               throttle_max=r.final_throttle_pct)
    assert set(KEYS) <= set(out)
    out["dirty_pages_rate"] = r.dirty_pages_rate
    out["guest"] = r.guest
    out["passes"] = [dict(kind=p.kind, dirty_found=p.dirty_found, sent=p.pages_sent,
                          zero=p.zero_pages, duration=p.duration_ns / NS,
                          throttle=p.throttle_pct, guest_writes=p.guest_writes)
                     for p in r.passes]
    return out


def predict(config, calibration, interface="bitmap", accel=None):
    """The loop's figures for this cell, under QEMU's names (seconds, bytes,
    pages), plus "passes" (per sync) and "inputs" (each with its source)."""
    cfg = loop_config(config, calibration, interface, accel)
    out = report_figures(migrate(cfg, sink="null"))
    out["inputs"] = calibration.inputs()
    out["loop"] = dict(backend=cfg.backend, strategy=cfg.strategy, rate=cfg.spec.rate,
                       link_bandwidth=cfg.link_bandwidth, page_ns=cfg.costs.page_ns)
    return out
