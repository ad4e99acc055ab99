"""The stall tables behind ``compare --guest-impact`` and bench/bench_guest_impact.py.

1. Loop placement (the global lock): per guest size and interface, the sync
   of one iteration is MEASURED here (a collect of `dirty` scattered pages
   on the emulated log, or the real KVM_GET_DIRTY_LOG), the send of those
   pages follows the cost model and stops at the max-wait cap; iterations
   run back to back for `window` seconds and the guest's exits are played
   against the lock holds on the virtual clock (kd_bql_model):
     iothread          each iteration holds the lock: sync + send (<= cap)
     migration-thread  only the sync holds it; the ring's harvest/reset none
2. The kernel's side (a per-slot lock, KVM's mmu_lock): the real kernel's
   guest write rate and longest stall while another thread collects
   (kd_collect_stall_run on /dev/kvm), next to the model of the same
   situation: the collector holds the slot lock for each call's modelled
   time (cost model: per call, word, re-protected page, flush; classic GET
   holds it over the whole slot, CLEAR per call, the ring's reset per
   coalesced mask), the guest's faults (CostModel.write_fault_ns each) take it
   for FAULT_LOCK_NS and wait while the collector holds it.
"""
import statistics
import time

import numpy as np

from ..bindings.guest_exits import GlobalLock, collect_stall
from ..bindings.sender import latency_percentiles
from ..bindings.constants import MEM_LOG_DIRTY_PAGES, PAGE_SIZE, WIRE_PAGE_RECORD
from ..bindings.vm import VM, backend_available
from ..costmodel import CostModel
from ..units import NS
from .compare import RING_ENTRIES, dirty_pages, gib_to_pages, ring_vcpus

LOOP_THREADS = ("iothread", "migration-thread")
LOOP_INTERFACES = ("bytemap", "flat", "twolevel", "ring", "kvm")
KERNEL_COLLECTORS = ("get", "clear", "ring")
#: of a guest write fault (CostModel.write_fault_ns, calibrated here), the part
#: that holds the slot lock (mmu_lock): assumed 1 us
FAULT_LOCK_NS = 1000


def _interface_available(name):
    ok, why = backend_available(name)
    return ok, why


def dirty_on_vcpus(vm, pages, vcpus):
    """Write `pages`, split over the vCPUs (each ring takes its share)."""
    for i, part in enumerate(np.array_split(pages, vcpus)):
        vm.write(part, vcpu=i)


def measure_sync(backend, size_gib, dirty, repeats=3, seed=0):
    """Median ns of one sync (collect of the whole slot) with `dirty`
    scattered pages re-dirtied before each round."""
    npages = gib_to_pages(size_gib)
    pages = dirty_pages(npages, dirty, seed)
    kw, vcpus = {}, 1
    if backend == "ring":
        vcpus = ring_vcpus(dirty)
        kw = dict(vcpus=vcpus, ring_entries=RING_ENTRIES)
    times = []
    with VM(backend, **kw) as vm:
        vm.set_user_memory_region(0, 0, npages * PAGE_SIZE, MEM_LOG_DIRTY_PAGES)
        vm.collect(0)
        for _ in range(repeats):
            dirty_on_vcpus(vm, pages, vcpus)
            t0 = time.perf_counter_ns()
            got = vm.collect(0)
            times.append(time.perf_counter_ns() - t0)
            if got.size != dirty:
                raise RuntimeError("%s collected %d of %d dirty pages" % (backend, got.size,
                                                                          dirty))
    return int(statistics.median(times))


def send_ns(dirty, cost=None, link_bandwidth=1.25e9):
    """Modelled time to read and send `dirty` pages (unlimited rate)."""
    cost = cost or CostModel()
    return int(dirty * (cost.page_ns + WIRE_PAGE_RECORD * NS / link_bandwidth))


def placement_model(sync, send, loop_thread, ring, vcpus, exit_rate, exit_service,
                    max_wait, window, period=0):
    """Exits against iterations of (sync, send capped at max_wait), one every
    `period` ns (0, or an iteration longer than it: back to back); returns the
    wait percentiles, the longest wait and the share of time the vCPUs waited."""
    gl = GlobalLock(vcpus, exit_rate, exit_service, virtual=True, log_cap=0)
    cap = int(max_wait * NS) if max_wait else send
    it_len = sync + min(send, cap)
    t, end = 0, int(window * NS)
    while t < end:
        if loop_thread == "iothread":
            gl.hold("iteration", t, t + it_len)
        elif not ring and sync:
            gl.hold("sync", t, t + sync)
        t += max(it_len, period, 1)
    gl.model(0, end)
    st = gl.stats()
    p50, p99 = latency_percentiles(gl.histogram(), (0.5, 0.99))
    # time the vCPUs spent waiting, as a share of the window (the last waits
    # may run past its end: at most 100%)
    waited = min(1.0, st["wait_sum_ns"] / (vcpus * end))
    p50, p99 = min(p50, st["wait_max_ns"]), min(p99, st["wait_max_ns"])  # bucket middles
    return dict(iteration_ns=it_len, wait_p50_ns=p50, wait_p99_ns=p99,
                wait_max_ns=st["wait_max_ns"], exits=st["exits"], slowdown_pct=100.0 * waited)


def loop_placement_table(sizes_gib=(64, 512), interfaces=LOOP_INTERFACES, dirty_rate=20000,
                         vcpus=2, exit_rate=1000, exit_service=10e-6, max_wait=0.05,
                         window=1.0, repeats=3, cost=None, bandwidths=(128 << 20, 0)):
    """The guest dirties dirty_rate pages/s; each sync is measured with a
    100 ms share of them dirty. bandwidths: rate limits in bytes/s. With a
    limit, one iteration per 100 ms window sends what was dirtied (at most
    the window's budget, limit / 10) and the lock is dropped until the next
    window, as QEMU does. 0 stands for a loop with a backlog (the bulk pass,
    or dirtying faster than the link): iterations back to back, each send
    stopped by the max-wait cap."""
    dirty = int(dirty_rate // 10)
    rows = []
    for size in sizes_gib:
        for iface in interfaces:
            ok, why = _interface_available(iface)
            if not ok:
                rows.append(dict(size_gib=size, interface=iface, status="skipped",
                                 reason=why))
                continue
            sync = measure_sync(iface, size, dirty, repeats)
            for bw in bandwidths:
                if bw:
                    send = send_ns(min(dirty, bw // 10 // WIRE_PAGE_RECORD), cost)
                else:
                    send = int(max_wait * NS)
                for lt in LOOP_THREADS:
                    r = placement_model(sync, send, lt, iface == "ring", vcpus, exit_rate,
                                        exit_service, max_wait, window,
                                        period=NS // 10 if bw else 0)
                    rows.append(dict(size_gib=size, interface=iface, loop_thread=lt,
                                     bandwidth=bw, status="ok", sync_ns=sync, send_ns=send,
                                     dirty=dirty, **r))
    return dict(settings=dict(dirty=dirty, dirty_rate=dirty_rate, vcpus=vcpus, exit_rate=exit_rate,
                              exit_service=exit_service, max_wait=max_wait, window=window,
                              sync="measured here (median of %d)" % repeats,
                              send="cost model page_ns + link 1.25 GB/s"), rows=rows)


# ---- the kernel's side ----------------------------------------------------

def kernel_model(size_gib, collector, duration, period, guest_pages, batch, chunk_pages,
                 cost=None, fault_lock_ns=FAULT_LOCK_NS):
    """The emulated model of the collector/guest race on one slot lock: every
    guest write faults (cost.write_fault_ns, of which fault_lock_ns under the
    lock); the collector's calls hold it for their cost-model time."""
    c = cost or CostModel()
    fault_ns = c.write_fault_ns
    npages = gib_to_pages(size_gib)
    nwords = -(-npages // 64)
    gl = GlobalLock(1, NS / (fault_ns - fault_lock_ns), fault_lock_ns / NS, virtual=True,
                    log_cap=0)
    t, end = 0, int(duration * NS)
    dirty = int(min(guest_pages, NS / fault_ns * max(period, 1e-9)))
    while t < end:
        start = t
        if collector == "get":  # mmu_lock over the whole walk
            h = int(c.ioctl_ns + nwords * c.word_ns + dirty * c.reprotect_ns + c.tlb_flush_ns)
            gl.hold("collect", t, t + h)
            t += h
        elif collector == "clear":  # GET copies without the lock, CLEAR per chunk
            t += int(c.ioctl_ns + nwords * c.word_ns)
            nchunks = -(-npages // chunk_pages)
            k = max(1, min(nchunks, dirty))
            for _ in range(k):
                h = int(c.ioctl_ns + chunk_pages / 64 * c.word_ns + dirty / k * c.reprotect_ns
                        + c.tlb_flush_ns)
                gl.hold("collect", t, t + h)
                t += h
        else:  # ring: harvest in user space; the reset takes the lock per 64-page
            # mask it coalesces (scattered pages: one entry each), then flushes
            t += int(dirty * c.ring_harvest_ns + c.ioctl_ns)
            h = max(1, int(c.ring_reset_ns))
            for _ in range(dirty):
                gl.hold("collect", t, t + h)
                t += h
            gl.hold("collect", t, t + int(c.tlb_flush_ns))
            t += int(c.tlb_flush_ns)
        t = max(t, start + int(period * NS))
    gl.model(0, end)
    st = gl.stats()
    return dict(rate=st["exits"] * NS / end,
                stall_max_ns=st["wait_max_ns"] + batch * fault_ns,
                hold_max_ns=st["holds"]["collect"]["max_ns"])


def kernel_side_table(sizes_gib=(64, 512), collectors=KERNEL_COLLECTORS, duration=1.0,
                      period=0.05, guest_pages=4096, batch=16, chunk_pages=1 << 18,
                      cost=None):
    cost = cost or CostModel()
    ok, why = backend_available("kvm")
    rows = []
    for size in sizes_gib:
        for coll in ("none",) + tuple(collectors):
            row = dict(size_gib=size, collector=coll)
            if coll != "none":
                row["model"] = kernel_model(size, coll, duration, period, guest_pages, batch,
                                            chunk_pages, cost)
            if not ok:
                row["real"] = None
                row["reason"] = why
            else:
                kw = dict(ring_entries=RING_ENTRIES) if coll == "ring" else {}
                with VM("kvm", **kw) as vm:
                    vm.set_user_memory_region(0, 0, gib_to_pages(size) * PAGE_SIZE,
                                              MEM_LOG_DIRTY_PAGES)
                    if coll == "clear":
                        vm.enable_manual_protect()
                    res, hist = collect_stall(vm, 0, coll, duration, period, guest_pages,
                                              batch, chunk_pages)
                p50, p99 = latency_percentiles(hist, (0.5, 0.99))
                row["real"] = dict(rate=res["guest_pages_written"] * NS / res["guest_ns"],
                                   stall_max_ns=res["stall_max_ns"],
                                   stall_max_cpu_ns=res["stall_max_cpu_ns"], entry_p50_ns=p50,
                                   entry_p99_ns=p99, collects=res["collects"],
                                   collect_max_ns=res["collect_max_ns"],
                                   call_max_ns=res["call_max_ns"])
            if row.get("real") and row.get("model"):
                row["ratio_stall"] = row["real"]["stall_max_ns"] / row["model"]["stall_max_ns"]
                row["ratio_rate"] = row["real"]["rate"] / row["model"]["rate"]
                if row["model"]["hold_max_ns"]:
                    row["ratio_hold"] = row["real"]["call_max_ns"] / row["model"]["hold_max_ns"]
            rows.append(row)
    return dict(settings=dict(duration=duration, period=period, guest_pages=guest_pages,
                              batch=batch, chunk_pages=chunk_pages,
                              fault_ns=cost.write_fault_ns,
                              fault_lock_ns=FAULT_LOCK_NS), rows=rows)


# ---- text ------------------------------------------------------------------

def _ms(ns):
    return "%.2f" % (ns / 1e6)


def format_placement(table):
    s = table["settings"]
    out = ["Guest exits on the global lock (%d vCPUs x %g exits/s, %.0f us each; guest "
           "dirtying %d pages/s, sync of %d dirty pages %s; send %s, cap %.0f ms; rate limit "
           "'none' = a loop with a backlog, each send stopped by the cap)" % (
               s["vcpus"], s["exit_rate"], s["exit_service"] * 1e6, s["dirty_rate"],
               s["dirty"], s["sync"], s["send"], s["max_wait"] * 1e3),
           "| guest | interface | rate limit | loop | sync ms | iteration ms | wait p50 ms | "
           "p99 ms | max ms | time waiting |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        if r["status"] != "ok":
            out.append("| %g GiB | %s | skipped: %s |" % (r["size_gib"], r["interface"],
                                                           r["reason"]))
            continue
        out.append("| %g GiB | %s | %s | %s | %s | %s | %s | %s | %s | %.2f%% |" % (
            r["size_gib"], r["interface"],
            "%d MiB/s" % (r["bandwidth"] >> 20) if r["bandwidth"] else "none",
            r["loop_thread"], _ms(r["sync_ns"]),
            _ms(r["iteration_ns"]), _ms(r["wait_p50_ns"]), _ms(r["wait_p99_ns"]),
            _ms(r["wait_max_ns"]), r["slowdown_pct"]))
    return "\n".join(out)


def format_kernel(table):
    s = table["settings"]
    out = ["The kernel's lock during collection: guest writes on its own vCPU thread while "
           "another thread collects every %.0f ms (%d pages spread over the slot, %d per "
           "entry; CLEAR chunks of %d pages); real = /dev/kvm here, model = emulated slot "
           "lock with the cost model" % (s["period"] * 1e3, s["guest_pages"], s["batch"],
                                          s["chunk_pages"]),
           "| guest | collector | real pages/s | real longest stall ms (wall / on CPU) | "
           "real entry p99 ms | real longest call ms | model pages/s | model longest stall ms"
           " | model longest hold ms | longest stall real/model | hold real/model |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        real, model = r.get("real"), r.get("model")
        out.append("| %g GiB | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["size_gib"], r["collector"],
            "%.0f" % real["rate"] if real else "skipped: %s" % r.get("reason"),
            "%s / %s" % (_ms(real["stall_max_ns"]), _ms(real["stall_max_cpu_ns"]))
            if real else "-",
            _ms(real["entry_p99_ns"]) if real else "-",
            _ms(real["call_max_ns"]) if real else "-",
            "%.0f" % model["rate"] if model else "-",
            _ms(model["stall_max_ns"]) if model else "-",
            _ms(model["hold_max_ns"]) if model else "-",
            "%.2fx" % r["ratio_stall"] if "ratio_stall" in r else "-",
            "%.2fx" % r["ratio_hold"] if "ratio_hold" in r else "-"))
    return "\n".join(out)


def section(sizes_gib):
    """The compare section: both tables for the given guest sizes."""
    return dict(placement=loop_placement_table(sizes_gib=sizes_gib),
                kernel=kernel_side_table(sizes_gib=sizes_gib))


def format_section(sec):
    return format_placement(sec["placement"]) + "\n\n" + format_kernel(sec["kernel"])
