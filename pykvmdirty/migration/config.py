"""Migration settings: :class:`MigrationConfig`, every option of a migration
validated in one place (errors name the field and the value), plus sizes and
the numeric checks they use."""
import dataclasses
import math
import numbers
from typing import Any, Optional, Union

from ..costmodel import CostModel
from ..bindings.constants import (
    DIRTY_GFN_SIZE, EMULATED_BACKENDS, MAX_VCPUS, PAGE_SIZE, REAL_BACKENDS, RING_MAX_ENTRIES,
    TRACKING, WIRE_BATCH_HEADER, WIRE_MAX_PAYLOAD, WIRE_PAGE_RECORD,
)
from ..bindings.guest_exits import exit_timing
from ..units import NS, MiB, parse_rate, parse_size
from .loop_placement import LOOP_THREADS
from .policy import DEFAULT_POLICY, POLICIES
from .strategies import STRATEGIES, strategy_class
from .trace import Trace
from .trace import load as load_trace
from .workloads import WorkloadSpec

MODES = ("virtual", "realtime")
ZERO_ACCOUNTING = ("header", "full")
FILLS = ("version", "random")
#: how guest pages are kept: "contents" (real 4 KiB pages), "versions" (the
#: content-free model: a 64-bit version per page, bindings.constants.PAGE_MODELS)
#: or "auto": versions for a guest over VERSIONS_ABOVE bytes migrated to a
#: local or null sink on an emulated backend, contents otherwise
PAGE_CHOICES = ("auto", "contents", "versions")
VERSIONS_ABOVE = 64 << 30
POPULATE_VALUE = 1 << 62  # what populate stores: no workload value collides with it
MAX_SLOTS = 4096
#: the virtual clock's smallest workload interval (s): below it a run takes
#: minutes of host time per second of guest time
MIN_STEP = 1e-4
#: the slowest virtual link (bytes/s): below it a guest of a few MiB takes hours
MIN_LINK_BANDWIDTH = 1 << 20
MIN_RING_ENTRIES = PAGE_SIZE // DIRTY_GFN_SIZE   # KVM: a ring of at least one page
#: seconds the global lock is held per guest exit. Assumed: a KVM_EXIT_MMIO/PIO
#: round trip through QEMU's device emulation costs microseconds to tens of them.
EXIT_SERVICE_S = 10e-6


def check_number(value, name, lo=None, hi=None, integer=False, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    if integer and not float(value).is_integer():
        raise ValueError("%s must be an integer, got %r" % (name, value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("%s must be finite, got %r" % (name, value))
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError("%s must be %s %s, got %r" % (name, ">" if lo_open else ">=", lo, value))
    if hi is not None and value > hi:
        raise ValueError("%s must be <= %s, got %r" % (name, hi, value))
    if not integer:
        return value
    return value if isinstance(value, int) else int(float(value))


def _choice(value, name, choices):
    if value not in choices:
        raise ValueError("unknown %s %r; choose from %s" % (name, value, ", ".join(choices)))
    return value


def as_cost_model(value, name="cost_model"):
    """A CostModel from None (defaults), a CostModel, a {field: ns} dict or a
    cost-model file path."""
    if value is None:
        return CostModel()
    if isinstance(value, CostModel):
        return value
    if isinstance(value, dict):
        return CostModel.from_dict(value, name)
    if isinstance(value, str):
        return CostModel.load(value)
    raise TypeError("%s must be a CostModel, a dict {field: ns} or a file path, got %r"
                    % (name, value))


@dataclasses.dataclass(frozen=True)
class MigrationConfig:
    """Everything a migration run is set up with. Construction validates
    every field and normalises it (sizes to bytes, the workload to a
    WorkloadSpec, the trace to a loaded Trace, the cost model to a
    CostModel); a bad value raises ValueError/TypeError naming the field.

    guest_size: bytes or a string like "2GiB", split into `slots` memslots.
    policy: "qemu-7.2" (QEMU 7.2's sync, switch-over and auto-converge rules)
      or "passes" (the project's pass-based rules); see migration/policy.py.
    strategy: "global", "per-slot", "chunked-clear" (clear_shift 6..31) or "ring".
    workload: "idle", "uniform", "hotspot", "zipf", "sequential", "migration-test"
      at `rate` pages/s (or trace: a trace file / Trace to replay, virtual mode).
    mode: "virtual" (deterministic, `step` seconds per workload interval) or
      "realtime" (C writer threads, one per vCPU).
    bandwidth: rate limit in bytes/s, or a rate string like "128MiB",
      "1250MB" or "10Gbit" (0, None, "none", "unlimited": no limit);
      link_bandwidth: virtual transfer speed, the same way (units.parse_rate).
      downtime_limit, max_wait: seconds. zero_pages: "header" (charge 9 bytes)
      or "full" (charge a page). populate: fraction of pages written
      before migration; fill "random" fills them with random bytes instead.
    cost_model: the virtual clock's prices (CostModel, dict, or a file path).
    window_log: keep the accounted bytes of the first N rate-limit windows.
    loop_thread: "iothread" (each iteration holds the global lock, QEMU 2010) or
      "migration-thread" (only the sync does); exit_rate: guest exits per second
      per vCPU that take the lock (0: none), each holding it exit_service
      seconds (10 us, assumed); guest_baseline: real time, seconds the guest
      runs alone first to measure its progress without the migration.
    warmup: virtual time, seconds the workload runs before the migration
      starts (its pages fill with data, as a real guest's do).
    pages: "contents" (every guest page is 4 KiB of real memory), "versions"
      (content-free: a 64-bit version per page, touched pages only; the
      sender, the destination and the verification use the versions; same
      figures) or "auto" (versions above 64 GiB with a local or null sink
      on an emulated backend).
    workload_start, workload_end: the byte range the workload writes
      (default: the whole guest).
    """

    guest_size: Union[int, str] = "2GiB"
    slots: int = 4
    backend: str = "flat"
    strategy: str = "global"
    workload: Union[str, WorkloadSpec] = "hotspot"
    rate: float = 20000
    hot_fraction: float = 0.05
    hot_share: float = 0.9
    zipf_s: float = 1.0
    seed: int = 0
    trace: Any = None
    record: Optional[str] = None
    mode: str = "virtual"
    vcpus: int = 2
    #: bytes/s once constructed (a rate string, or None for 0 = no limit, before)
    bandwidth: Any = 128 * MiB
    link_bandwidth: Any = 1250 * 1000 * 1000
    downtime_limit: float = 0.3
    max_wait: float = 0.05
    max_passes: int = 30
    auto_converge: bool = False
    zero_pages: str = "header"
    clear_shift: int = 18
    populate: float = 0.25
    fill: str = "version"
    step: float = 0.01
    cost_model: Any = None
    batch_bytes: int = MiB
    ring_entries: int = 4096
    dirty_tracking: str = "write_protect"
    window_log: int = 0
    verify: bool = True
    duration_limit: Optional[float] = None
    loop_thread: str = "migration-thread"
    exit_rate: float = 0
    exit_service: float = EXIT_SERVICE_S
    guest_baseline: float = 0.5
    policy: str = DEFAULT_POLICY
    warmup: float = 0
    workload_start: Union[int, str] = 0
    workload_end: Union[int, str, None] = None
    pages: str = "auto"
    #: normalised by construction: guest size in bytes, the workload as a spec,
    #: the prices as a CostModel
    guest_bytes: int = dataclasses.field(init=False)
    spec: WorkloadSpec = dataclasses.field(init=False)
    costs: CostModel = dataclasses.field(init=False)

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        guest = parse_size(self.guest_size, "guest_size")
        if guest <= 0 or guest % PAGE_SIZE:
            raise ValueError("guest_size must be a positive multiple of %d bytes, got %d"
                             % (PAGE_SIZE, guest))
        put("guest_size", guest)
        put("guest_bytes", guest)
        put("slots", check_number(self.slots, "slots", lo=1, hi=MAX_SLOTS, integer=True))
        if self.slots > self.npages:
            raise ValueError("slots (%d) must not exceed the guest's %d pages"
                             % (self.slots, self.npages))
        _choice(self.backend, "backend", EMULATED_BACKENDS + REAL_BACKENDS)
        _choice(self.strategy, "strategy", STRATEGIES)
        _choice(self.mode, "mode", MODES)
        _choice(self.dirty_tracking, "dirty_tracking", tuple(TRACKING))
        strategy_class(self.strategy).check_backend(self.backend)
        shift = check_number(self.clear_shift, "clear_shift", integer=True)
        if not 6 <= shift <= 31:
            raise ValueError("clear_shift must be in 6..31 (QEMU x-clear-bitmap-shift), got %d"
                             % shift)
        put("clear_shift", shift)
        bw = 0 if self.bandwidth is None else parse_rate(self.bandwidth, "bandwidth",
                                                         unlimited=True)
        if bw and bw / 10 < WIRE_PAGE_RECORD:
            raise ValueError("bandwidth %r bytes/s is below one page record per 100 ms window "
                             "(%d bytes/s minimum)" % (bw, WIRE_PAGE_RECORD * 10))
        put("bandwidth", bw)
        put("link_bandwidth", 0 if self.link_bandwidth is None else
            parse_rate(self.link_bandwidth, "link_bandwidth", unlimited=True))
        if 0 < self.link_bandwidth < MIN_LINK_BANDWIDTH:
            raise ValueError("link_bandwidth must be 0 (instant) or at least %d bytes/s (1 MiB/s), "
                             "got %r" % (MIN_LINK_BANDWIDTH, self.link_bandwidth))
        put("downtime_limit", check_number(self.downtime_limit, "downtime_limit", lo=0,
                                           lo_open=True))
        put("max_wait", check_number(self.max_wait, "max_wait", lo=0, hi=3600))
        put("max_passes", check_number(self.max_passes, "max_passes", lo=1, integer=True))
        if self.zero_pages not in ZERO_ACCOUNTING:
            raise ValueError("zero_pages must be 'header' or 'full', got %r" % (self.zero_pages,))
        put("populate", check_number(self.populate, "populate", lo=0, hi=1))
        if self.fill not in FILLS:
            raise ValueError("fill must be 'version' or 'random', got %r" % (self.fill,))
        put("step", check_number(self.step, "step", lo=MIN_STEP, hi=10))
        put("vcpus", check_number(self.vcpus, "vcpus", lo=1, hi=MAX_VCPUS, integer=True))
        put("batch_bytes", check_number(self.batch_bytes, "batch_bytes",
                                        lo=WIRE_BATCH_HEADER + WIRE_PAGE_RECORD,
                                        hi=WIRE_MAX_PAYLOAD, integer=True))
        put("window_log", check_number(self.window_log, "window_log", lo=0, integer=True))
        ring = check_number(self.ring_entries, "ring_entries", lo=0, integer=True)
        if (ring or self.backend == "ring") and not (
                ring & (ring - 1) == 0 and MIN_RING_ENTRIES <= ring <= RING_MAX_ENTRIES):
            raise ValueError("ring_entries must be a power of two in %d..%d (at least a page of "
                             "entries, at most KVM's maximum), got %r"
                             % (MIN_RING_ENTRIES, RING_MAX_ENTRIES, self.ring_entries))
        put("ring_entries", ring)
        put("duration_limit", check_number(self.duration_limit, "duration_limit", lo=0,
                                           allow_none=True))
        put("costs", as_cost_model(self.cost_model))
        put("spec", self.workload if isinstance(self.workload, WorkloadSpec) else
            WorkloadSpec(self.workload, self.rate, self.seed, self.hot_fraction,
                         self.hot_share, self.zipf_s))
        if self.trace is not None:
            if self.mode != "virtual":
                raise ValueError("trace replay runs in virtual mode (mode='virtual'), not %r"
                                 % self.mode)
            trace = self.trace if isinstance(self.trace, Trace) else load_trace(self.trace)
            if trace.npages > self.npages:
                raise ValueError("the trace covers %d pages but the guest has %d"
                                 % (trace.npages, self.npages))
            put("trace", trace)
        _choice(self.loop_thread, "loop_thread", LOOP_THREADS)
        exit_timing(self.exit_rate, self.exit_service)  # ValueError names the bad one
        put("guest_baseline", check_number(self.guest_baseline, "guest_baseline", lo=0, hi=60))
        _choice(self.policy, "policy", POLICIES)
        put("warmup", check_number(self.warmup, "warmup", lo=0, hi=3600))
        if self.warmup and not self.virtual:
            raise ValueError("warmup runs on the virtual clock (mode='virtual'), not %r"
                             % self.mode)
        lo = parse_size(self.workload_start, "workload_start")
        hi = guest if self.workload_end is None else parse_size(self.workload_end,
                                                                "workload_end")
        if lo % PAGE_SIZE or hi % PAGE_SIZE or not 0 <= lo < hi <= guest:
            raise ValueError("the workload range [%r, %r) must be page aligned and inside the "
                             "guest's %d bytes" % (self.workload_start, self.workload_end, guest))
        put("workload_start", lo)
        put("workload_end", hi)
        _choice(self.pages, "pages", PAGE_CHOICES)
        if self.pages == "versions" and self.backend in REAL_BACKENDS:
            raise ValueError("pages 'versions' needs an emulated backend: the %r backend "
                             "tracks real pages (use pages='contents')" % self.backend)
        put("auto_converge", bool(self.auto_converge))
        put("verify", bool(self.verify))

    # -- derived -------------------------------------------------------------
    @property
    def npages(self):
        return self.guest_bytes // PAGE_SIZE

    @property
    def workload_pages(self):
        """(first gfn, pages) of the range the workload writes."""
        first = int(self.workload_start) // PAGE_SIZE   # bytes once constructed
        return first, int(self.workload_end or self.guest_bytes) // PAGE_SIZE - first

    @property
    def step_ns(self):
        return int(self.step * NS)

    @property
    def virtual(self):
        return self.mode == "virtual"

    @property
    def sync(self):
        """The sync strategy object (one class per strategy)."""
        return strategy_class(self.strategy)()

    def page_model(self, sink="local"):
        """"contents" or "versions" for a run to `sink` ("local", "null", or
        anything else: a remote destination, which receives contents)."""
        remote = sink not in ("local", "null", None)
        if self.pages == "versions":
            if remote:
                raise ValueError("pages 'versions' migrates to a local or null sink only; a "
                                 "remote destination receives page contents (pages='contents')")
            return "versions"
        if self.pages == "contents" or remote or self.backend in REAL_BACKENDS:
            return "contents"
        return "versions" if self.guest_bytes > VERSIONS_ABOVE else "contents"

    def vm_ring_entries(self):
        """ring_entries for the VM: the ring backend always has rings; kvm only
        when the ring strategy harvests them."""
        if self.backend == "ring":
            return self.ring_entries
        if self.backend == "kvm":
            return self.ring_entries if strategy_class(self.strategy).uses_ring else 0
        return None

    def as_dict(self, sink_name):
        """The report's "config" object (JSON-ready)."""
        return dict(guest_bytes=self.guest_bytes, slots=self.slots, backend=self.backend,
                    strategy=self.strategy, mode=self.mode, vcpus=self.vcpus,
                    workload=self.spec.as_dict(),
                    trace=None if self.trace is None else self.trace.meta,
                    bandwidth=self.bandwidth, link_bandwidth=self.link_bandwidth,
                    downtime_limit=self.downtime_limit, max_wait=self.max_wait,
                    max_passes=self.max_passes, auto_converge=self.auto_converge,
                    zero_pages=self.zero_pages, clear_shift=self.clear_shift,
                    populate=self.populate, fill=self.fill, sink=sink_name, step=self.step,
                    cost_model=self.costs.to_dict(), batch_bytes=self.batch_bytes,
                    ring_entries=self.ring_entries, dirty_tracking=self.dirty_tracking,
                    step_ns=self.step_ns, loop_thread=self.loop_thread,
                    exit_rate=self.exit_rate, exit_service=self.exit_service,
                    policy=self.policy, warmup=self.warmup, pages=self.pages,
                    workload_range=[self.workload_start, self.workload_end])
