"""Pre-copy live migration: the controller around the C scan-and-send loop.

``migrate(...)`` builds a guest (a VM with guest memory in ``slots`` memslots),
starts a workload, and migrates it to a sink:

1. bulk pass: every page of every slot is sent;
2. passes: sync the dirty log with a strategy, send the dirty pages
   (C: read, zero check, encode, rate limit, time cap), repeat;
3. when the expected downtime (pending dirty bytes / measured bandwidth) is
   below ``downtime_limit``, or after ``max_passes``: stop the workload, final
   sync, send the rest without the rate limit, end the stream;
4. verify the destination page by page (64-bit hashes) against the source.

Sync strategies: ``global`` (collect every slot at the start of a pass, QEMU's
migration_bitmap_sync), ``per-slot`` (collect each slot just before scanning
it, the 2010 proposal), ``chunked-clear`` (manual protect: GET without
clearing at pass start, CLEAR each 2^clear_shift-page chunk just before its
first page is sent, QEMU's clear_bmap), ``ring`` (harvest and reset the dirty
rings at pass start and whenever a vCPU's ring fills).

Clocks: ``mode="virtual"`` is deterministic: a virtual clock advanced by a
cost model (collect: per call, word, re-protected page, ring entry; send: per
page read and bytes / link_bandwidth), the workload writing what its rate
gives for each elapsed ``step``. ``mode="realtime"`` runs the workload as C
threads (vCPUs) concurrently with the loop; each C call of the loop runs
without the GIL.

Sample-to-send latency is, per page sent, the sender clock when the page
left minus the time its dirty information was taken: the collect (or GET for
the bulk pass) that reported it, or for chunked-clear the CLEAR of its chunk
(the moment its write protection was re-armed). A redundant send is a page
whose first 8 bytes equal those of its previous send: workloads store a new
value on every write, so that is "content unchanged since last sent".
"""

import numpy as np

from .._native import ffi, lib
from ..errors import check
from ..bindings.vm import EMULATED_BACKENDS, MEM_LOG_DIRTY_PAGES, PAGE_SIZE, VM
from .config import (COST_MODEL, MODES, NS, STRATEGIES, ZERO_ACCOUNTING, MiB, check_number,
                     parse_size)
from .controller import Controller, SlotState, populate_guest, run_passes, verify_destination, closed_windows
from .errors import MigrationError
from .progress import progress_printer
from .report import MigrationReport
from .sinks import LocalSink, NullSink, SinkError, TcpSink
from .trace import Recorder, Trace, TraceWorkload
from .trace import load as load_trace
from .workloads import ThreadWorkload, VirtualWorkload, WorkloadSpec


def make_sink(sink):
    if sink is None or sink == "local":
        return LocalSink()
    if sink == "null":
        return NullSink()
    if isinstance(sink, str) and sink.startswith("tcp://"):
        return TcpSink(sink[len("tcp://"):])
    if isinstance(sink, str):
        raise ValueError("unknown sink %r; use 'null', 'local', 'tcp://HOST:PORT' or a sink "
                         "object" % sink)
    for attr in ("open", "send", "finish", "encodes"):
        if not hasattr(sink, attr):
            raise TypeError("sink object %r lacks %r" % (sink, attr))
    return sink


def migrate(guest_size="2GiB", slots=4, backend="flat", strategy="global",
            workload="hotspot", rate=20000, hot_fraction=0.05, hot_share=0.9, zipf_s=1.0,
            seed=0, trace=None, record=None, mode="virtual", vcpus=2,
            bandwidth=128 * MiB, link_bandwidth=1250 * 1000 * 1000, downtime_limit=0.3,
            max_wait=0.05, max_passes=30, auto_converge=False, zero_pages="header",
            clear_shift=18, populate=0.25, fill="version", sink="local", step=0.01,
            cost_model=None, batch_bytes=MiB, ring_entries=4096,
            dirty_tracking="write_protect", window_log=0, progress=None, verify=True,
            duration_limit=None, profile=None):
    """Migrate a freshly built guest; returns a MigrationReport.

    guest_size: bytes or a string like "2GiB", split into `slots` memslots.
    strategy: "global", "per-slot", "chunked-clear" (clear_shift 6..31) or "ring".
    workload: "idle", "uniform", "hotspot", "zipf", "sequential", "migration-test"
      at `rate` pages/s (or trace: a trace file / Trace to replay, virtual mode).
    mode: "virtual" (deterministic, `step` seconds per workload interval) or
      "realtime" (C writer threads, one per vCPU).
    bandwidth: rate limit in bytes/s (0 = none); link_bandwidth: virtual transfer
      speed. downtime_limit, max_wait: seconds. zero_pages: "header" (charge 9
      bytes) or "full" (charge a page). populate: fraction of pages written
      before migration; fill "random" fills them with random bytes instead.
    sink: "local" (in-process destination), "null", "tcp://HOST:PORT" or an object.
    window_log: keep the accounted bytes of the first N rate-limit windows.
    profile: None (this emulator's loop) or "qemu": QEMU 7.2's loop as a model
      (pykvmdirty/qemu/profile.py); returns its Prediction instead of a report.
    """
    if profile is not None:
        from ..qemu.entry import migrate_qemu_profile, check_profile
        check_profile(profile)
        return migrate_qemu_profile(parse_size(guest_size, "guest_size"), workload, rate,
                                    hot_fraction, hot_share, seed, bandwidth, downtime_limit,
                                    auto_converge, duration_limit)
    # ---- arguments ----
    guest_bytes = parse_size(guest_size, "guest_size")
    if guest_bytes <= 0 or guest_bytes % PAGE_SIZE:
        raise ValueError("guest_size must be a positive multiple of %d bytes, got %d"
                         % (PAGE_SIZE, guest_bytes))
    nslots = check_number(slots, "slots", lo=1, hi=4096, integer=True)
    npages = guest_bytes // PAGE_SIZE
    if nslots > npages:
        raise ValueError("slots (%d) must not exceed the guest's %d pages" % (nslots, npages))
    if backend not in EMULATED_BACKENDS + ("kvm", "uffd"):
        raise ValueError("unknown backend %r; choose from %s"
                         % (backend, ", ".join(EMULATED_BACKENDS + ("kvm", "uffd"))))
    if strategy not in STRATEGIES:
        raise ValueError("unknown strategy %r; choose from %s" % (strategy, ", ".join(STRATEGIES)))
    if mode not in MODES:
        raise ValueError("unknown mode %r; choose from %s" % (mode, ", ".join(MODES)))
    if strategy == "ring" and backend not in ("ring", "kvm"):
        raise ValueError("strategy 'ring' needs the ring (or kvm) backend, not %r" % backend)
    if strategy == "chunked-clear" and backend == "ring":
        raise ValueError("strategy 'chunked-clear' needs a bitmap backend (GET/CLEAR), "
                         "not %r" % backend)
    if strategy == "chunked-clear" and backend == "uffd":
        raise ValueError("strategy 'chunked-clear' needs KVM_CLEAR_DIRTY_LOG (manual protect), "
                         "which the uffd backend lacks (PAGEMAP_SCAN reports and re-protects "
                         "in one step); use 'global' or 'per-slot'")
    clear_shift = check_number(clear_shift, "clear_shift", integer=True)
    if not 6 <= clear_shift <= 31:
        raise ValueError("clear_shift must be in 6..31 (QEMU x-clear-bitmap-shift), got %d"
                         % clear_shift)
    bandwidth = check_number(bandwidth, "bandwidth", lo=0, allow_none=True) or 0
    if bandwidth and bandwidth / 10 < lib.KD_WIRE_PAGE_RECORD:
        raise ValueError("bandwidth %r bytes/s is below one page record per 100 ms window "
                         "(%d bytes/s minimum)" % (bandwidth, lib.KD_WIRE_PAGE_RECORD * 10))
    link_bandwidth = check_number(link_bandwidth, "link_bandwidth", lo=0, allow_none=True) or 0
    downtime_limit = check_number(downtime_limit, "downtime_limit", lo=0, lo_open=True)
    max_wait = check_number(max_wait, "max_wait", lo=0)
    max_passes = check_number(max_passes, "max_passes", lo=1, integer=True)
    if zero_pages not in ZERO_ACCOUNTING:
        raise ValueError("zero_pages must be 'header' or 'full', got %r" % (zero_pages,))
    populate = check_number(populate, "populate", lo=0, hi=1)
    if fill not in ("version", "random"):
        raise ValueError("fill must be 'version' or 'random', got %r" % (fill,))
    step = check_number(step, "step", lo=0, lo_open=True)
    vcpus = check_number(vcpus, "vcpus", lo=1, hi=256, integer=True)
    batch_bytes = check_number(batch_bytes, "batch_bytes", lo=lib.KD_WIRE_BATCH_HEADER
                          + lib.KD_WIRE_PAGE_RECORD, hi=lib.KD_WIRE_MAX_PAYLOAD, integer=True)
    window_log = check_number(window_log, "window_log", lo=0, integer=True)
    cm = dict(COST_MODEL)
    if cost_model:
        unknown = set(cost_model) - set(cm)
        if unknown:
            raise ValueError("unknown cost_model keys %s; known: %s"
                             % (sorted(unknown), ", ".join(cm)))
        cm.update(cost_model)
    spec = WorkloadSpec(workload, rate, seed, hot_fraction, hot_share, zipf_s)
    if trace is not None:
        if mode != "virtual":
            raise ValueError("trace replay runs in virtual mode (mode='virtual'), not %r" % mode)
        trace = trace if isinstance(trace, Trace) else load_trace(trace)
        if trace.npages > npages:
            raise ValueError("the trace covers %d pages but the guest has %d"
                             % (trace.npages, npages))
    sink_obj = make_sink(sink)
    if progress is True:
        progress = progress_printer()

    config = dict(guest_bytes=guest_bytes, slots=nslots, backend=backend, strategy=strategy,
                  mode=mode, vcpus=vcpus, workload=spec.as_dict(),
                  trace=None if trace is None else trace.meta, bandwidth=bandwidth,
                  link_bandwidth=link_bandwidth, downtime_limit=downtime_limit,
                  max_wait=max_wait, max_passes=max_passes, auto_converge=bool(auto_converge),
                  zero_pages=zero_pages, clear_shift=clear_shift, populate=populate, fill=fill,
                  sink=getattr(sink_obj, "name", type(sink_obj).__name__), step=step,
                  cost_model=cm, batch_bytes=batch_bytes, ring_entries=ring_entries,
                  dirty_tracking=dirty_tracking, step_ns=int(step * NS))
    report = MigrationReport(config)

    # ---- the guest ----
    vm_kw = dict(vcpus=vcpus, dirty_tracking=dirty_tracking, guest_memory=True)
    if backend in ("ring", "kvm"):
        vm_kw["ring_entries"] = ring_entries if backend == "ring" else (
            ring_entries if strategy == "ring" else 0)
    vm = VM(backend, **vm_kw)
    sender = None
    threads = None
    try:
        if strategy == "chunked-clear":
            vm.enable_manual_protect()
        per = -(-npages // nslots)
        slot_objs = []
        for i in range(nslots):
            first = i * per
            n = min(per, npages - first)
            if n <= 0:
                break
            vm.set_user_memory_region(i, first * PAGE_SIZE, n * PAGE_SIZE, MEM_LOG_DIRTY_PAGES)
            slot_objs.append(SlotState(vm, i, first, n))
        populate_guest(vm, slot_objs, npages, populate, fill, seed)

        scfg = ffi.new("struct kd_send_config *")
        scfg.rate_limit = int(bandwidth)
        scfg.max_wait_ns = int(max_wait * NS)
        scfg.flags = (lib.KD_SEND_ZERO_AS_FULL if zero_pages == "full" else 0)
        if mode == "virtual":
            scfg.flags |= lib.KD_SEND_VIRTUAL_CLOCK
            scfg.link_bandwidth = int(link_bandwidth)
            scfg.page_cost_ns = int(cm["page_ns"])
            scfg.clear_call_ns = int(cm["call_ns"] + cm["flush_ns"])
            scfg.reprotect_ns = int(cm["reprotect_ns"])
        sp = ffi.new("kd_sender **")
        check(lib.kd_sender_create(scfg, sp), "kd_sender_create")
        sender = ffi.gc(sp[0], lib.kd_sender_destroy)
        wlog = None
        if window_log:
            wlog = np.zeros(window_log, dtype=np.uint64)
            check(lib.kd_sender_set_window_log(sender, ffi.from_buffer("uint64_t[]", wlog),
                                               window_log), "window_log")

        recorder = Recorder(npages, dict(workload=spec.as_dict(), mode=mode, backend=backend,
                                         strategy=strategy)) if record else None
        ctl = Controller(config, vm, slot_objs, sender, sink_obj, None, None, progress)
        if mode == "virtual":
            vw = VirtualWorkload(vm, spec, 0, npages, on_ring_full=ctl.reap, recorder=recorder)
            ctl.wl = TraceWorkload(vm, trace, vw.write_gfns) if trace is not None else vw
            ctl._vw = vw
        else:
            threads = ThreadWorkload(vm, spec, 0, npages)
            ctl.threads = threads

        run_passes(ctl, report, slot_objs, sink_obj, sender, auto_converge, downtime_limit,
             max_passes, bandwidth, recorder, duration_limit)

        if wlog is not None:
            check(lib.kd_sender_close_window(sender), "close_window")
            report.window_log = wlog[:min(closed_windows(sender), window_log)].copy()
        report.window_budget = bandwidth // 10 if bandwidth else None
        if recorder is not None:
            recorder.save(record)
        report.vm_stats = vm.stats

        # ---- verification ----
        result = sink_obj.finish()
        if result is None or not verify:
            report.verified = None
        else:
            report.destination = dict(result.stats)
            report.verified, report.mismatched_pages = verify_destination(slot_objs, result)
        return report
    except SinkError as e:
        raise MigrationError(str(e)) from None
    finally:
        if threads is not None:
            try:
                threads.stop()
            except Exception:
                pass
        try:
            sink_obj.close()
        except Exception:
            pass
        vm.close()
