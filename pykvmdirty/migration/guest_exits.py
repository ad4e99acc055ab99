"""Guest exits in a migration run: the defaults of the exit model, the guest
running alone before the migration (real time: its progress without the
loop), and the guest-impact section of the report (the virtual clock plays
the exits against the loop's recorded holds, and against none for the
baseline)."""
import time

from ..analysis import guest_impact
from ..bindings.guest_exits import GlobalLock
from .config import NS
from .workloads import ThreadWorkload

#: seconds the global lock is held per guest exit. Assumed: a KVM_EXIT_MMIO/PIO
#: round trip through QEMU's device emulation is microseconds to tens of them.
EXIT_SERVICE_S = 10e-6
#: exits per second per vCPU when guest exits are asked for without a rate
#: (CLI --exit-rate); assumed: device accesses of a busy guest (timer, virtio
#: notifications without ioeventfd, serial), not a measured figure.
EXIT_RATE_DEFAULT = 1000


def guest_alone(vm, spec, npages, vcpus, exit_rate, exit_service, seconds):
    """Real time: the guest runs `seconds` alone (same threads and exits, no
    migration loop); returns its pages/s and exit statistics."""
    if seconds <= 0:
        return None
    gl = GlobalLock(vcpus, exit_rate, exit_service)
    th = ThreadWorkload(vm, spec, 0, npages, global_lock=gl)
    t0 = time.perf_counter_ns()
    th.start()
    end = t0 + int(seconds * NS)
    ring = vm.backend == "ring" or (vm.backend == "kvm" and vm.ring_entries)
    while time.perf_counter_ns() < end:
        time.sleep(0.01)
        if ring:  # nobody else resets the rings before migration: keep them moving
            for v in range(vm.vcpus):
                vm.harvest(v)
            vm.reset_dirty_rings()
    writes = th.stop()
    window = time.perf_counter_ns() - t0
    st = gl.stats()
    return dict(pages_per_s=writes * NS / window if spec.kind != "idle" else None,
                window_ns=window, blocked_ns=st["blocked_ns"], exits=st["exits"],
                wait_max_ns=st["wait_max_ns"])


def guest_report(gl, report, mode, spec, vcpus, exit_rate, exit_service, loop_thread,
                 max_wait, baseline):
    t0, t1 = report.t_begin_ns, report.t_stop_ns
    progress = None
    if mode == "virtual":
        gl.model(t0, t1)
        alone = GlobalLock(vcpus, exit_rate, exit_service, virtual=True, log_cap=0)
        alone.model(t0, t1)
        st = alone.stats()
        baseline = dict(window_ns=t1 - t0, blocked_ns=st["blocked_ns"], rate=spec.rate)
    elif baseline is not None and baseline.get("pages_per_s") is not None:
        progress = report.workload_writes * NS / max(t1 - t0, 1)
    gi = guest_impact.summarize(gl, t0, t1, loop_thread, max_wait, baseline, progress)
    return gi, gl.events()
