"""The QEMU profile: a model of QEMU 7.2's pre-copy loop (migration/migration.c,
migration/ram.c) driven by measured inputs.

What it follows, step by step:
- setup: every page of every RAM block is dirty in the migration bitmap
  (``bmap``), dirty logging starts, one bitmap sync (dirty-sync-count 1);
- the migration thread's loop: ``migration_iteration_run`` compares the
  pending dirty bytes with ``threshold_size``; below it, a bitmap sync
  (``ram_save_pending``: the KVM log ORed into bmap and cleared); still below
  (or nothing pending): completion; else ``ram_save_iterate``: pages are sent
  in address order from the last position, wrapping, until the 100 ms
  window's byte budget (max-bandwidth / 10) is spent, 50 ms have passed
  (MAX_WAIT) or a whole round finds nothing;
- ``migration_update_counters`` at the end of each >= 100 ms window:
  bandwidth = bytes of the window / its length, threshold_size = bandwidth x
  downtime-limit, expected downtime = remaining / bandwidth (once a dirty
  rate is known); the budget restarts;
- a zero page is a "duplicate": 9 bytes on the wire (header + a byte) but
  still the CPU time of checking it; a normal page is 8 + 4096 bytes;
- auto-converge (``migration_trigger_throttle``) at a sync at least 1 s after
  the last check: bytes dirtied in the period > throttle-trigger-threshold
  (50 %) of the bytes transferred in it, twice -> throttle: initial 20 %, then
  +10 %, at most 99 %; a throttled guest dirties at (1 - throttle) of its rate;
- completion: the VM stops, a last sync, everything dirty is sent with no
  rate limit; downtime = that time + the stop/device-state overhead;
- no pass limit: a loop that never gets under the threshold runs until the
  time limit (status "timeout", like a real migration someone cancels).

Measured inputs (never guessed): the guest's write rate and its rate of
first writes to write-protected pages (each faults under dirty logging) from
the real guest's counter, and the platform's per-page send costs
(:class:`Platform`, measured by measure.calibrate on this machine, or fitted
from the real run's own 100 ms samples by measure.run_costs).

The fault-bound rate has two phases: during the bulk pass (before the second
bitmap sync) the sender copies every page once and competes with the faulting
vCPU for this machine's cores, afterwards it sends only re-dirtied pages, so
the guest's first-write rate is measured separately for each phase
(``fault_rate`` and ``fault_rate_iter``).  The re-protection itself follows
QEMU's clear_bmap: KVM_CLEAR_DIRTY_LOG of a 1 GiB chunk just before the first
page of that chunk is sent after a sync; a 1 GiB guest is one chunk and its
first page is sent right after the sync, so the model re-protects at the sync.

auto-converge and QEMU's dirty-pages-rate count, as ram.c does, only the
pages a sync newly sets in the migration bitmap (num_dirty_pages_period), not
pages re-dirtied while still waiting to be sent.
Only the guest's write pattern is modelled: a-b sweeps [start, end) in order;
uniform and hotspot draw pages as the guest does (hotspot: a share of the
writes to the hot set, the rest to the other pages); every workload also
rewrites its status page.  Vectorised over pages with numpy.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np

from . import layout
from .layout import PAGE

PAGE_RECORD = 8 + PAGE          # be64 offset|flags + the page
ZERO_RECORD = 8 + 1             # be64 offset|ZERO + the fill byte
EOS_RECORD = 8
BUFFER_DELAY = 0.1              # s, migration.c
MAX_WAIT = 0.05                 # s, ram.c
THROTTLE_CHECK_PERIOD = 1.0     # s, migration_bitmap_sync
TRIGGER_THRESHOLD = 0.5         # throttle-trigger-threshold 50 %
MAX_THROTTLE = 99
BIOS_PAGES = 16                 # pc.bios: the 64 KiB image (non-zero)
ROM_PAGES = 32                  # pc.rom: 128 KiB of option ROM space (zero here)
LOW_NONZERO = [layout.PARAMS_ADDR // PAGE, layout.STATUS_ADDR // PAGE]
STATUS_PAGE = layout.STATUS_ADDR // PAGE

KEYS = ("status", "total_time", "setup_time", "downtime", "dirty_sync_count", "transferred",
        "normal", "duplicate", "throttle_max")


@dataclass
class Platform:
    """Per-page costs of QEMU's sender on this machine (seconds)."""
    normal_page_s: float = 1.0 / 120_000    # one normal page while the guest runs
    normal_page_s_iter: Optional[float] = None  # the same after the bulk pass (None: as above)
    zero_page_s: float = 1.0 / 2_000_000    # one zero page (buffer_is_zero + header)
    stopped_normal_page_s: float = 1.0 / 300_000   # one normal page in the downtime
    downtime_overhead_s: float = 0.003      # stop, final sync, device state, EOS
    setup_s: float = 0.002
    sync_s: float = 0.0005                  # one bitmap sync
    fault_rate: float = 30000.0             # guest first writes/s to protected pages
    measured: bool = False                  # False: these defaults, not a measurement

    def as_dict(self):
        return asdict(self)


@dataclass
class GuestModel:
    """The guest's write pattern and its measured rates (pages/s, unthrottled)."""
    workload: str
    guest_pages: int
    start_page: int
    npages: int
    rate: float                             # page writes per second (uniform, hotspot)
    fault_rate: float = 30000.0             # first writes/s to protected pages, bulk pass
    fault_rate_iter: Optional[float] = None  # the same after the bulk pass (None: as above)
    hot_first: int = 0
    hot_pages: int = 0
    hot_share: float = 0.0
    seed: int = 1
    written_before: int = 0                 # page writes before the migration started

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)
        self._pos = 0                        # a-b: next page of the range
        self._carry = 0.0
        self.bulk_done = False               # set by the loop at the second bitmap sync

    @property
    def current_fault_rate(self):
        if self.bulk_done and self.fault_rate_iter is not None:
            return self.fault_rate_iter
        return self.fault_rate

    def initial_nonzero(self, nonzero):
        """Mark the pages that hold data when the migration starts."""
        nonzero[LOW_NONZERO] = True
        if self.workload == "idle":
            return
        r = slice(self.start_page, self.start_page + self.npages)
        if self.workload == "ab":
            nonzero[r] = self.written_before > 0
            if 0 < self.written_before < self.npages:
                nonzero[self.start_page + self.written_before:r.stop] = False
            return
        k = min(self.written_before, 4 * self.npages)
        nonzero[self.start_page + self._draw(k)] = True

    def step(self, log, nonzero, seconds, throttle):
        """The guest runs `seconds` at `throttle` %: mark what it dirties in `log`.

        Dirty logging write-protects every page again at each sync (QEMU clears the
        KVM log of a chunk before sending from it), so a write to a page not yet
        dirtied since the sync faults: at most ``fault_rate`` such first writes per
        second; writes to pages already dirtied run at the guest's own rate.
        """
        log[STATUS_PAGE] = nonzero[STATUS_PAGE] = True
        run = seconds * (1 - throttle / 100.0)
        if run <= 0 or self.workload == "idle":
            return
        x = self.current_fault_rate * run + self._carry
        cap = int(x)
        self._carry = x - cap
        s, n = self.start_page, self.npages
        if self.workload == "ab":
            idx = np.flatnonzero(~log[s:s + n])
            if idx.size == 0 or cap == 0:
                return
            order = np.concatenate((idx[idx >= self._pos], idx[idx < self._pos]))
            new = order[:cap]
            self._pos = int(new[-1]) + 1 if new.size < order.size else self._pos
        else:
            nwrites = min(int(self.rate * run + 0.5), 4 * n)
            pages = self._draw(nwrites)
            pages = pages[~log[s + pages]]
            if pages.size == 0:
                return
            _, first = np.unique(pages, return_index=True)
            new = pages[np.sort(first)][:cap]
        log[s + new] = True
        nonzero[s + new] = True

    def _draw(self, k):
        n = self.npages
        if self.workload == "uniform":
            return self._rng.integers(0, n, size=k)
        hot = self._rng.random(k) < self.hot_share
        pages = np.empty(k, dtype=np.int64)
        nh = int(hot.sum())
        pages[hot] = self.hot_first + self._rng.integers(0, self.hot_pages, size=nh)
        cold_n = n - self.hot_pages
        if cold_n > 0:
            c = self._rng.integers(0, cold_n, size=k - nh)
            c[c >= self.hot_first] += self.hot_pages
            pages[~hot] = c
        else:
            pages[~hot] = self.hot_first + self._rng.integers(0, self.hot_pages, size=k - nh)
        return pages


@dataclass
class QemuSettings:
    bandwidth: int = 128 << 20              # max-bandwidth, bytes/s
    downtime_limit: float = 0.3             # s
    auto_converge: bool = False
    throttle_initial: int = 20
    throttle_increment: int = 10
    timeout: float = 60.0                   # s: still iterating then -> "timeout"


@dataclass
class MigrationFigures:
    """What QEMU reports of a migration (query-migrate; times in seconds,
    sizes in bytes), under the names both the runner's measurement
    (runner.QemuResult) and the model's prediction use."""
    status: str = ""
    total_time: float = 0.0
    setup_time: float = 0.0
    downtime: float = 0.0
    expected_downtime: float = 0.0
    dirty_sync_count: int = 0
    transferred: int = 0
    normal: int = 0
    duplicate: int = 0
    throttle_max: int = 0           # highest cpu-throttle-percentage, %

    def as_dict(self):
        return asdict(self)


@dataclass
class Prediction(MigrationFigures):
    """The model's figures."""
    dirty_pages_rate: float = 0.0           # as QEMU reports it: new pages/s, last period
    downtime_normal: int = 0                # normal pages sent with the VM stopped
    iterations: List[dict] = field(default_factory=list)   # one per bitmap sync

    def summary(self):
        return {k: getattr(self, k) for k in KEYS}


class QemuLoop:
    """One run of the model. ``run()`` returns a Prediction."""

    def __init__(self, guest: GuestModel, settings: QemuSettings, platform: Platform):
        self.g, self.q, self.p = guest, settings, platform
        total = guest.guest_pages + BIOS_PAGES + ROM_PAGES
        self.total = total
        self.bmap = np.ones(total, dtype=bool)          # migration bitmap: to send
        self.log = np.zeros(total, dtype=bool)          # KVM dirty log since the last sync
        self.nonzero = np.zeros(total, dtype=bool)
        guest.initial_nonzero(self.nonzero)
        self.nonzero[guest.guest_pages:guest.guest_pages + BIOS_PAGES] = True
        self.t = 0.0
        self.t_guest = 0.0                              # the guest has run up to here
        self.throttle = 0
        self.pos = 0
        self.out = Prediction()
        self.bytes = 0
        # run()'s loop state (ram.c / migration.c counters)
        self.threshold = 0.0
        self.window_start = 0.0
        self.window_bytes = 0
        self.high = 0
        self.period_dirty = 0
        self.period_bytes = 0
        self.last_check: Optional[float] = None
        self.dirty_rate_known = False

    # -- the guest --------------------------------------------------------------------
    def _run_guest(self, until):
        dt = until - self.t_guest
        if dt > 0:
            self.g.step(self.log, self.nonzero, dt, self.throttle)
            self.t_guest = until

    # -- ram.c --------------------------------------------------------------------------
    def _sync(self):
        """migration_bitmap_sync: the log into bmap, cleared; maybe the throttle check."""
        self._run_guest(self.t)
        real = int(self.log.sum())
        new = int((self.log & ~self.bmap).sum())
        self.bmap |= self.log
        self.log[:] = False
        self.t += self.p.sync_s
        self.out.dirty_sync_count += 1
        self.period_dirty += new            # ram.c: num_dirty_pages_period (new bits only)
        if self.out.dirty_sync_count == 2:
            self.g.bulk_done = True
        if self.last_check is None:
            self.last_check = self.t
        elif self.t > self.last_check + THROTTLE_CHECK_PERIOD:
            xfer = self.bytes - self.period_bytes
            dirty = self.period_dirty * PAGE
            if self.q.auto_converge and dirty > xfer * TRIGGER_THRESHOLD:
                self.high += 1
                if self.high >= 2:
                    self.high = 0
                    self.throttle = (self.q.throttle_initial if self.throttle == 0 else
                                     min(self.throttle + self.q.throttle_increment,
                                         MAX_THROTTLE))
                    self.out.throttle_max = max(self.out.throttle_max, self.throttle)
            self.dirty_rate_known = True
            self.out.dirty_pages_rate = self.period_dirty / (self.t - self.last_check)
            self.last_check, self.period_dirty, self.period_bytes = self.t, 0, self.bytes
        self.out.iterations.append(dict(t=self.t, pending=int(self.bmap.sum()), new=new,
                                        real=real, throttle=self.throttle,
                                        normal=self.out.normal, transferred=self.bytes,
                                        threshold=self.threshold))

    def _costs(self, idx, stopped=False):
        nz = self.nonzero[idx]
        per_normal = self.p.normal_page_s
        if stopped:
            per_normal = self.p.stopped_normal_page_s
        elif self.g.bulk_done and self.p.normal_page_s_iter is not None:
            per_normal = self.p.normal_page_s_iter
        secs = np.where(nz, per_normal, self.p.zero_page_s)
        nbytes = np.where(nz, PAGE_RECORD, ZERO_RECORD)
        return nz, secs, nbytes

    def _send_pages(self, idx, nz, nbytes):
        self.bmap[idx] = False
        self.out.normal += int(nz.sum())
        self.out.duplicate += int(idx.size - nz.sum())
        b = int(nbytes.sum())
        self.bytes += b
        self.window_bytes += b

    def _iterate(self):
        """ram_save_iterate: until rate limited, MAX_WAIT, or a round finds nothing."""
        t_begin = self.t
        budget = self.q.bandwidth * BUFFER_DELAY if self.q.bandwidth else float("inf")
        wrapped = False
        while True:
            if self.window_bytes > budget:
                return "rate-limited"
            if self.t - t_begin > MAX_WAIT:
                return "max-wait"
            chunk = np.flatnonzero(self.bmap[self.pos:self.pos + 65536]) + self.pos
            if chunk.size == 0:
                nxt = self.pos + 65536
                if nxt >= self.total:
                    if wrapped or not self.bmap.any():
                        return "done"
                    wrapped, self.pos = True, 0
                else:
                    self.pos = nxt
                continue
            nz, secs, nbytes = self._costs(chunk)
            ct, cb = np.cumsum(secs), np.cumsum(nbytes)
            # the checks come before each page (qemu_file_rate_limit: used > max), so the
            # page that takes a limit past its bound is still sent
            k = min(int(np.searchsorted(cb, budget - self.window_bytes, side="right")) + 1,
                    int(np.searchsorted(ct, MAX_WAIT - (self.t - t_begin), side="right")) + 1,
                    chunk.size)
            self._send_pages(chunk[:k], nz[:k], nbytes[:k])
            self.t += float(ct[k - 1])
            self.pos = int(chunk[k - 1]) + 1
            if self.pos >= self.total:
                self.pos = 0
                wrapped = True
            self._run_guest(self.t)

    def _update_counters(self):
        """migration_update_counters at the end of a >= 100 ms window."""
        spent = self.t - self.window_start
        if spent < BUFFER_DELAY - 1e-9:      # (float time: a window ended at start + 0.1)
            return
        bw = self.window_bytes / spent
        self.threshold = bw * self.q.downtime_limit
        if self.dirty_rate_known and self.window_bytes > 10000 and bw > 0:
            self.out.expected_downtime = self.bmap.sum() * PAGE / bw
        self.window_start, self.window_bytes = self.t, 0

    def run(self):
        q, p, out = self.q, self.p, self.out
        self.threshold = 0.0
        self.window_bytes = 0
        self.high = 0
        self.period_dirty = 0
        self.period_bytes = 0
        self.last_check = None
        self.dirty_rate_known = False
        # setup: bmap all ones, logging on, the first sync
        self.t = p.setup_s
        out.setup_time = p.setup_s
        self._sync()
        self.window_start = self.t
        budget = q.bandwidth * BUFFER_DELAY if q.bandwidth else float("inf")
        while True:
            # migration_iteration_run
            pending = self.bmap.sum() * PAGE
            if pending < self.threshold:
                self._sync()
                pending = self.bmap.sum() * PAGE
            if not pending or pending < self.threshold:
                break
            if self.t > q.timeout:
                out.status = "timeout"
                out.total_time, out.transferred = self.t, self.bytes
                return out
            why = self._iterate()
            self.bytes += EOS_RECORD
            self.window_bytes += EOS_RECORD
            self._update_counters()
            if why == "rate-limited" or self.window_bytes > budget:
                # migration_rate_limit: sleep to the end of the window
                self.t = max(self.t, self.window_start + BUFFER_DELAY)
                self._run_guest(self.t)
                self._update_counters()
        # migration_completion: stop, last sync, everything with no rate limit
        t_stop = self.t
        self._sync()
        idx = np.flatnonzero(self.bmap)
        nz, secs, nbytes = self._costs(idx, stopped=True)
        self._send_pages(idx, nz, nbytes)
        out.downtime_normal = int(nz.sum())
        self.bytes += EOS_RECORD
        self.t += float(secs.sum()) + p.downtime_overhead_s
        out.downtime = self.t - t_stop
        out.total_time = self.t
        out.transferred = self.bytes
        out.status = "completed"
        return out


def predict(guest: GuestModel, settings: QemuSettings, platform: Platform) -> Prediction:
    return QemuLoop(guest, settings, platform).run()
