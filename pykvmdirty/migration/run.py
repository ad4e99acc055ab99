"""Pre-copy live migration: the controller around the C scan-and-send loop.

``migrate(...)`` builds a guest (a VM with guest memory in ``slots`` memslots),
starts a workload, and migrates it to a sink:

1. every page starts pending (the migration bitmap all ones);
2. iterations send pending pages from where the last one stopped (C: read,
   zero check, encode, rate limit, time cap); the policy (``qemu-7.2`` by
   default, or ``passes``) decides when to sync the dirty log into the
   bitmap, when to throttle the guest and when to switch over;
3. stop-and-copy: stop the workload, final sync, send the rest without the
   rate limit, end the stream;
4. verify the destination page by page (64-bit hashes, or with the
   content-free page model the versions) against the source.

Sync strategies (migration/strategies.py): ``global`` (collect every slot at
the start of a pass, QEMU's migration_bitmap_sync), ``per-slot`` (collect
each slot just before scanning it, the 2010 proposal), ``chunked-clear``
(manual protect: GET without
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
import dataclasses
import os

from .. import limits
from ..bindings.constants import MEM_LOG_DIRTY_PAGES, PAGE_SIZE
from ..bindings.sender import Sender, SendRegion
from ..bindings.vm import VM
from ..errors import SinkError
from ..units import NS
from .config import MigrationConfig
from .controller import Controller, populate_guest, run_loop, verify_destination
from .errors import MigrationError
from .policy import policy_class
from .progress import ProgressPrinter
from .report import MigrationReport
from .sinks import LocalSink, NullSink, TcpSink
from .trace import Recorder
from .trace import load as load_trace
from .guest_exits import guest_alone, guest_report


def make_sink(sink, page_model="contents"):
    if sink is None or sink == "local":
        return LocalSink(page_model)
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


def memory_estimate(cfg, sink="local", process=True):
    """limits.Estimate of what a migration with this MigrationConfig commits
    (process: with what this process already holds, for its peak RSS)."""
    kind = sink if sink in ("local", "null") else ("local" if sink is None else "remote")
    spec = cfg.spec
    return limits.migration_estimate(
        cfg.npages, cfg.slots, cfg.backend, vcpus=cfg.vcpus, populate=cfg.populate,
        rate=spec.rate, workload=spec.kind, bandwidth=cfg.bandwidth,
        link_bandwidth=cfg.link_bandwidth, sink=kind, verify=cfg.verify,
        ring_entries=cfg.ring_entries, tracking=cfg.dirty_tracking,
        batch_bytes=cfg.batch_bytes,
        trace_pages=None if cfg.trace is None else int(cfg.trace.gfns.size),
        hot=(spec.hot_fraction, spec.hot_share), fill=cfg.fill, page_ns=cfg.costs.page_ns,
        downtime_limit=cfg.downtime_limit, max_passes=cfg.max_passes,
        page_model=cfg.page_model(kind), warmup=cfg.warmup, process=process)


def check_memory(cfg, sink="local", max_memory=None, guest_size=None):
    """Refuse (limits.MemoryLimitError), before anything is allocated, a run
    whose estimated memory exceeds max_memory (default: see pykvmdirty.limits)."""
    # the limit is a share of the memory still available: what this process
    # already holds is not asked for again
    est = memory_estimate(cfg, sink, process=False)
    limits.check(est, limits.resolve_limit(max_memory), "guest_size %s"
                 % (guest_size if guest_size is not None else
                    limits.format_bytes(cfg.guest_bytes),))


def migrate(config=None, *, sink="local", progress=None, max_memory=None, **options):
    """Migrate a freshly built guest; returns a MigrationReport.

    config: a MigrationConfig, or None to build one from ``options`` (the
    MigrationConfig fields: guest_size, slots, backend, strategy, workload,
    rate, ..., cost_model; see MigrationConfig). Options given with a config
    replace its fields.
    sink: "local" (in-process destination), "null", "tcp://HOST:PORT" or an object.
    progress: True for a progress bar on stderr, or a callable
      progress(pass_index, pages_done, pages_total) (optionally with end_pass(pm)).
    max_memory: refuse (limits.MemoryLimitError, a ValueError) a run whose
      estimated memory exceeds this, before anything is allocated (bytes or
      "8GiB"; default: a share of the memory available, see pykvmdirty.limits).
    """
    if config is None:
        if isinstance(options.get("trace"), (str, os.PathLike)):
            # a trace file is bounded by the limit the user gave, before it is read
            options["trace"] = load_trace(options["trace"],
                                          max_bytes=limits.resolve_limit(max_memory)[0])
        cfg = MigrationConfig(**options)
    elif isinstance(config, MigrationConfig):
        cfg = dataclasses.replace(config, **options) if options else config
    else:
        raise TypeError("config must be a MigrationConfig, got %r" % (config,))
    page_model = cfg.page_model(sink if isinstance(sink, str) or sink is None else "object")
    check_memory(cfg, sink, max_memory, options.get("guest_size"))
    sink_obj = make_sink(sink, page_model)
    if progress is True:
        progress = ProgressPrinter()
    report = MigrationReport(cfg.as_dict(getattr(sink_obj, "name", type(sink_obj).__name__)))
    report.config["pages"] = page_model

    # ---- the guest ----
    vm = VM(cfg.backend, vcpus=cfg.vcpus, dirty_tracking=cfg.dirty_tracking, guest_memory=True,
            ring_entries=cfg.vm_ring_entries(), page_model=page_model)
    ctl = None
    try:
        cfg.sync.prepare(vm)
        per = -(-cfg.npages // cfg.slots)
        regions = []
        for i in range(cfg.slots):
            first = i * per
            n = min(per, cfg.npages - first)
            if n <= 0:
                break
            vm.set_user_memory_region(i, first * PAGE_SIZE, n * PAGE_SIZE, MEM_LOG_DIRTY_PAGES)
            regions.append(SendRegion(vm, i, first, n))
        populate_guest(vm, regions, cfg.npages, cfg.populate, cfg.fill, cfg.seed)

        costs = cfg.costs
        sender = Sender(rate_limit=int(cfg.bandwidth), max_wait_ns=int(cfg.max_wait * NS),
                        zero_as_full=cfg.zero_pages == "full", virtual_clock=cfg.virtual,
                        link_bandwidth=int(cfg.link_bandwidth),
                        page_cost_ns=int(costs.page_ns),
                        clear_call_ns=int(costs.ioctl_ns + costs.tlb_flush_ns),
                        reprotect_ns=int(costs.reprotect_ns),
                        # QEMU's iteration ends at the rate limit; iothread drops the lock
                        rate_yield=(cfg.loop_thread == "iothread"
                                    or not policy_class(cfg.policy).whole_pass))
        if sink_obj.encodes:
            sender.set_buffer(cfg.batch_bytes)
        if cfg.window_log:
            sender.set_window_log(cfg.window_log)

        recorder = Recorder(cfg.npages, dict(workload=cfg.spec.as_dict(), mode=cfg.mode,
                                             backend=cfg.backend, strategy=cfg.strategy)) \
            if cfg.record else None
        ctl = Controller(cfg, vm, regions, sender, sink_obj, progress, recorder)
        baseline = guest_alone(vm, cfg) if ctl.global_lock and not cfg.virtual else None
        run_loop(ctl, report)
        if ctl.global_lock is not None:
            report.guest_impact, report.guest_events = guest_report(ctl.global_lock, report,
                                                                    cfg, baseline)

        if sender.window_log is not None:
            sender.close_window()
            windows = min(sender.stats()["windows"], cfg.window_log)
            report.window_log = sender.window_log[:windows].copy()
        report.window_budget = cfg.bandwidth // 10 if cfg.bandwidth else None
        if recorder is not None:
            recorder.save(cfg.record)
        report.vm_stats = vm.stats

        # ---- verification ----
        result = sink_obj.finish()
        if result is None or not cfg.verify:
            report.verified = None
        else:
            report.destination = dict(result.stats)
            report.verified, report.mismatched_pages = verify_destination(vm, regions, result)
        return report
    except SinkError as e:
        raise MigrationError(str(e)) from None
    finally:
        if ctl is not None:
            ctl.placement.close()  # never leave vCPU exits waiting on the lock
        if ctl is not None and ctl.threads is not None:
            try:
                ctl.threads.stop()
            except Exception:
                pass
        try:
            sink_obj.close()
        except Exception:
            pass
        vm.close()
