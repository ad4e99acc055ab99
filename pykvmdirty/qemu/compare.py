"""Real QEMU next to the QEMU profile: one cell = one real migration (runner.py)
and the model (profile.py) fed with the same settings, the guest's rate as
measured under that migration, and this machine's calibrated Platform.

The default grid: a-b at 1 GiB/s and at 128 MiB/s with auto-converge, a-b at
1 GiB/s with a 1 s limit without it, uniform and hotspot at two rates.
Goals per cell: sync count within +-1 (+-20 % above 10), transferred bytes and
normal pages within +-20 %, total time within +-30 %, downtime within +-50 %
or +-50 ms.
"""
from dataclasses import replace

from .config import QemuConfig
from .layout import GIB, MIB, PAGE
from .diagnose import explain, measured_mechanisms, model_mechanisms
from .measure import fault_rate, guest_rate_under_migration, iter_fault_rate, run_costs
from .profile import KEYS, GuestModel, QemuSettings, predict
from .runner import run_migration

DEFAULT_GRID = (
    dict(name="ab 1GiB/s ac", workload="ab", bandwidth=GIB, auto_converge=True),
    dict(name="ab 128MiB/s ac", workload="ab", bandwidth=128 * MIB, auto_converge=True),
    dict(name="ab 1GiB/s 1s", workload="ab", bandwidth=GIB, downtime_limit=1.0),
    dict(name="uniform 20k", workload="uniform", rate=20000),
    dict(name="uniform 200k", workload="uniform", rate=200000),
    dict(name="hotspot 20k", workload="hotspot", rate=20000),
    dict(name="hotspot 200k", workload="hotspot", rate=200000),
)


def model_for(config: QemuConfig, rate, written_before, fault_rate, fault_rate_iter=None):
    guest = GuestModel(config.workload, config.guest_size // PAGE, config.start // PAGE,
                       config.npages, rate, fault_rate=fault_rate,
                       fault_rate_iter=fault_rate_iter,
                       hot_first=config.hot_first() if config.workload == "hotspot" else 0,
                       hot_pages=config.hot_pages() if config.workload == "hotspot" else 0,
                       hot_share=config.hot_share, seed=config.seed,
                       written_before=written_before)
    settings = QemuSettings(bandwidth=config.bandwidth, downtime_limit=config.downtime_limit,
                            auto_converge=config.auto_converge,
                            throttle_initial=config.throttle_initial,
                            throttle_increment=config.throttle_increment,
                            timeout=config.timeout)
    return guest, settings


def measured_summary(result):
    return {k: getattr(result, k) for k in KEYS}


def goals(measured, predicted):
    """Which goals the cell meets: {name: bool}."""
    def rel(k, tol):
        m, p = measured[k], predicted[k]
        return abs(p - m) <= tol * max(abs(m), 1e-12)
    m, p = measured, predicted
    syncs = abs(p["dirty_sync_count"] - m["dirty_sync_count"]) <= (
        1 if m["dirty_sync_count"] <= 10 else 0.2 * m["dirty_sync_count"])
    return {"status": m["status"] == p["status"], "syncs": syncs,
            "transferred": rel("transferred", 0.2), "normal": rel("normal", 0.2),
            "total_time": rel("total_time", 0.3),
            "downtime": rel("downtime", 0.5) or abs(p["downtime"] - m["downtime"]) <= 0.05}


def run_cell(config: QemuConfig, platform, on_sample=None, name=None):
    """One cell: measured (real QEMU) and predicted (the model), same keys.

    The model's inputs from this run: the guest's write rate while migrating
    (its counter; a paced guest falls short of its nominal rate on a loaded
    host), an a-b guest's first-write rate in the bulk pass and after it, the
    sender's per-page costs and the setup time (measure.run_costs); the rest
    (the fixed downtime overhead, what the run cannot determine) from the
    calibration."""
    res = run_migration(config, on_sample=on_sample)
    rate = guest_rate_under_migration(res)
    faults = faults_iter = None
    if config.workload == "ab":                  # this run's sweeps under logging
        faults = fault_rate(res, config.npages)
        faults_iter = iter_fault_rate(res, config.npages)
    if config.workload in ("uniform", "hotspot"):
        # a paced guest's writes/s were measured under dirty logging, faults
        # included; its first writes are a subset of them
        faults = rate
    faults = faults or platform.fault_rate       # else the calibration's a-b guest's
    written = int(res.samples[0]["guest_pages"]) if res.samples else 0
    guest, settings = model_for(config, rate, written, faults, faults_iter)
    plat, fitted = run_costs(res, platform, config.bandwidth)
    pred = predict(guest, settings, plat)
    m, p = measured_summary(res), pred.summary()
    g = goals(m, p)
    rd, pd = res.as_dict(), pred.as_dict()
    mm = measured_mechanisms(rd, plat.downtime_overhead_s, config.downtime_limit)
    pm = model_mechanisms(pd, plat.as_dict())
    return {"name": name or config.workload, "config": config.as_dict(), "accel": res.accel,
            "accel_note": res.accel_note, "guest_rate": rate, "guest_rate_warmup": res.guest_rate,
            "fault_rate": faults, "fault_rate_iter": faults_iter,
            "measured": m, "predicted": p, "goals": g,
            "why": explain(g, mm, pm, config.bandwidth),
            "mechanisms": {"measured": mm, "model": pm}, "fitted_from_run": fitted,
            "verification": res.verification, "platform": plat.as_dict(),
            "samples": res.samples, "iterations": pred.iterations}


def grid_configs(base: QemuConfig, grid=DEFAULT_GRID):
    out = []
    for cell in grid:
        kw = dict(cell)
        name = kw.pop("name")
        out.append((name, replace(base, **kw)))
    return out
