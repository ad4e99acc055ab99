"""Guest exits in a migration run: the guest running alone before the
migration (real time: its progress without the loop), and the guest-impact
section of the report (on the virtual clock the exits are played against
the loop's recorded holds, and against none for the baseline)."""
import time

from . import guest_impact
from ..bindings.guest_exits import GlobalLock
from ..units import NS
from .workloads import ThreadWorkload


#: how far a real-time baseline window may be stretched on a busy host
BASELINE_STRETCH = 20


def guest_alone(vm, cfg):
    """Real time: the guest runs cfg.guest_baseline seconds alone (the same
    threads and exits, no migration loop); its pages/s and exit statistics."""
    if cfg.guest_baseline <= 0:
        return None
    gl = GlobalLock(cfg.vcpus, cfg.exit_rate, cfg.exit_service)
    th = ThreadWorkload(vm, cfg.spec, 0, cfg.npages, global_lock=gl)
    writes0 = vm.stats["writes"]
    t0 = time.perf_counter_ns()
    th.start()
    end = t0 + int(cfg.guest_baseline * NS)
    # a window in which the guest's threads got no CPU measures nothing: on
    # a busy host it is stretched (up to BASELINE_STRETCH times) until they
    # have written
    last = t0 + int(cfg.guest_baseline * NS * BASELINE_STRETCH)
    while True:
        now = time.perf_counter_ns()
        if now >= last or (now >= end and (cfg.spec.kind == "idle"
                                           or vm.stats["writes"] > writes0)):
            break
        time.sleep(0.01)
        if vm.ring_entries:  # nobody else resets the rings before migration
            for v in range(vm.vcpus):
                vm.harvest(v)
            vm.reset_dirty_rings()
    writes = th.stop()
    window = time.perf_counter_ns() - t0
    st = gl.stats()
    return dict(pages_per_s=writes * NS / window if cfg.spec.kind != "idle" else None,
                window_ns=window, blocked_ns=st["blocked_ns"], exits=st["exits"],
                wait_max_ns=st["wait_max_ns"])


def guest_report(gl, report, cfg, baseline):
    """(the report's guest_impact dict, the stall-timeline events)."""
    t0, t1 = report.t_begin_ns, report.t_stop_ns
    progress = None
    if cfg.virtual:
        gl.model(t0, t1)
        alone = GlobalLock(cfg.vcpus, cfg.exit_rate, cfg.exit_service, virtual=True, log_cap=0)
        alone.model(t0, t1)
        st = alone.stats()
        baseline = dict(window_ns=t1 - t0, blocked_ns=st["blocked_ns"], rate=cfg.spec.rate)
    elif baseline is not None and baseline.get("pages_per_s") is not None:
        progress = report.workload_writes * NS / max(t1 - t0, 1)
    gi = guest_impact.summarize(gl, t0, t1, cfg.loop_thread, cfg.max_wait, baseline, progress)
    return gi, gl.events()
