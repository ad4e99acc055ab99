"""Convergence policies: when the pre-copy loop syncs the dirty log, when it
switches over to stop-and-copy, and when it throttles the guest.

The loop (controller.run_loop) is the same for every policy: it sends the
pages of the migration bitmap (pending.Pending) through the C sender, on
whatever backend and sync strategy the run uses. A policy answers three
questions and nothing else:

- ``start(loop)``: what happens at setup (QEMU: one sync);
- ``should_complete(loop)``: called before each iteration; it may sync
  (``loop.sync()``) and answers whether to stop the VM now;
- ``after_iteration(loop, why)``: called after each iteration ("done",
  "rate-limited", "time-cap"): rate windows, waits, counters.

``whole_pass`` says what one iteration is: the whole pending set (a pass) or
what fits before the rate limit or the time cap (QEMU's ram_save_iterate).

Policies:

``qemu-7.2`` — QEMU 7.2's rules (migration/migration.c, migration/ram.c):
  setup syncs once (dirty-sync-count 1); before each iteration, if the
  pending bytes are below ``threshold`` it syncs, and if they are still below
  (or nothing is pending) it completes; an iteration sends until the 100 ms
  window's budget (max-bandwidth / 10) is spent or 50 ms passed
  (checked every 64 pages) or nothing is pending; after each iteration, once
  at least 100 ms passed since the window began: bandwidth = bytes of the
  window / its length, threshold = bandwidth x downtime-limit, expected
  downtime = pending / bandwidth (once a dirty rate is known), a new window;
  then, if rate limited, it sleeps to the window's end. Auto-converge, at a
  sync more than 1 s after the last check: pages newly set in the bitmap
  since that check x page size > 50 % (throttle-trigger-threshold) of the
  bytes sent since, twice (the count is not reset by a miss) -> throttle
  20 %, then +10 % per trigger, at most 99 %; the throttle takes that share
  of every vCPU's time (QEMU's cpu throttle sleeps the vCPU). QEMU has no
  pass limit: a migration that never converges runs until cancelled; here it
  stops at ``duration_limit`` or after ``max_passes`` syncs with status
  "timeout".

``passes`` — the project's pass-based rules: a bulk pass sends every page,
  then each pass syncs and sends everything pending; it switches over when
  pending / the last pass's bandwidth fits the downtime limit, after
  ``max_passes`` passes, or at ``duration_limit``; auto-converge checks at
  each pass: pending bytes > half the last pass's bytes, twice -> 20 %, +10 %,
  at most 99 %.
"""
from ..bindings.constants import PAGE_SIZE
from ..units import NS

BUFFER_DELAY_NS = 100_000_000        # migration.c: the rate-limit window
THROTTLE_CHECK_NS = 1_000_000_000    # ram.c migration_bitmap_sync: 1 s between checks
TRIGGER_THRESHOLD = 0.5              # throttle-trigger-threshold 50 %
THROTTLE_INITIAL = 20                # cpu-throttle-initial
THROTTLE_INCREMENT = 10              # cpu-throttle-increment
MAX_THROTTLE = 99                    # max-cpu-throttle
MIN_WINDOW_BYTES = 10000             # migration_update_counters: expected downtime needs more


def next_throttle(current):
    """The throttle after one auto-converge trigger (percent)."""
    return THROTTLE_INITIAL if current == 0 else min(current + THROTTLE_INCREMENT, MAX_THROTTLE)


class Policy:
    name = ""
    whole_pass = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.throttle = 0
        self.triggers = 0
        self.status = "completed"

    def start(self, loop):
        pass

    def should_complete(self, loop):
        raise NotImplementedError

    def after_iteration(self, loop, why):
        pass

    def _out_of_time(self, loop):
        lim = self.cfg.duration_limit
        return lim is not None and loop.elapsed_ns() > lim * NS

    def _throttle_up(self, loop):
        self.throttle = next_throttle(self.throttle)
        self.triggers += 1
        loop.set_throttle(self.throttle)


class PassPolicy(Policy):
    """The project's pass-based rules (see the module text)."""
    name = "passes"
    whole_pass = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.high = 0
        self.bulk_sent = False

    def should_complete(self, loop):
        if not self.bulk_sent:
            self.bulk_sent = True
            return False
        last = loop.last_pass
        bw = last.bandwidth or (self.cfg.bandwidth or 1)
        estimate = loop.collects_per_slot   # per-slot polling learns the set while sending
        if estimate:
            pending = last.dirty_found
            loop.sync()
        else:
            loop.sync()
            pending = loop.pending.count
        expected = pending * PAGE_SIZE * NS / bw
        loop.pm.expected_downtime_ns = int(expected)
        fits = expected <= self.cfg.downtime_limit * NS
        if fits or loop.npasses() >= self.cfg.max_passes or self._out_of_time(loop):
            loop.converged = fits
            return True
        if self.cfg.auto_converge and last.kind != "bulk":
            if pending * PAGE_SIZE * 2 > last.bytes:
                self.high += 1
            if self.high >= 2:
                self.high = 0
                self._throttle_up(loop)
        loop.pm.throttle_pct = self.throttle
        return False


class Qemu72Policy(Policy):
    """QEMU 7.2's rules (see the module text)."""
    name = "qemu-7.2"
    whole_pass = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.threshold = 0.0          # bytes: bandwidth x downtime-limit
        self.window_start = 0
        self.window_bytes0 = 0
        self.last_check = None        # time of the last auto-converge check
        self.period_new = 0           # pages newly set in the bitmap since then
        self.period_bytes0 = 0
        self.high = 0
        self.rate_known = False
        self.dirty_pages_rate = 0.0   # pages/s, as query-migrate reports it
        self.expected_downtime_ns = 0
        self.bandwidth = 0.0          # bytes/s of the last closed window

    def start(self, loop):
        self.window_start = loop.clock()
        self.window_bytes0 = loop.bytes_sent()
        self._sync(loop)

    def _sync(self, loop):
        """migration_bitmap_sync, with migration_trigger_throttle's check."""
        self.period_new += loop.sync()
        now = loop.clock()
        if self.last_check is None:
            self.last_check = now
            self.period_bytes0 = loop.bytes_sent()
            return
        if now <= self.last_check + THROTTLE_CHECK_NS:
            return
        xfer = loop.bytes_sent() - self.period_bytes0
        dirty = self.period_new * PAGE_SIZE
        if self.cfg.auto_converge and dirty > xfer * TRIGGER_THRESHOLD:
            self.high += 1
            if self.high >= 2:
                self.high = 0
                self._throttle_up(loop)
                loop.pm.throttle_pct = self.throttle
        self.rate_known = True
        self.dirty_pages_rate = self.period_new * NS / (now - self.last_check)
        self.last_check, self.period_new, self.period_bytes0 = now, 0, loop.bytes_sent()

    def should_complete(self, loop):
        pending = loop.pending.count * PAGE_SIZE
        if pending < self.threshold:
            self._sync(loop)
            pending = loop.pending.count * PAGE_SIZE
        if not pending or pending < self.threshold:
            loop.converged = True
            loop.pm.expected_downtime_ns = self.expected_downtime_ns
            return True
        if self._out_of_time(loop) or loop.syncs > self.cfg.max_passes:
            self.status = "timeout"
            loop.converged = False
            return True
        return False

    def after_iteration(self, loop, why):
        self._update_counters(loop)
        if why == "rate-limited":
            loop.wait_window()

    def _update_counters(self, loop):
        """migration_update_counters: at the end of a >= 100 ms window."""
        now = loop.clock()
        spent = now - self.window_start
        if spent < BUFFER_DELAY_NS:
            return
        sent = loop.bytes_sent() - self.window_bytes0
        self.bandwidth = sent * NS / spent
        self.threshold = self.bandwidth * self.cfg.downtime_limit
        if self.rate_known and sent > MIN_WINDOW_BYTES and self.bandwidth > 0:
            self.expected_downtime_ns = int(loop.pending.count * PAGE_SIZE * NS
                                            / self.bandwidth)
            loop.pm.expected_downtime_ns = self.expected_downtime_ns
        self.window_start, self.window_bytes0 = now, loop.bytes_sent()


POLICY_CLASSES = {cls.name: cls for cls in (Qemu72Policy, PassPolicy)}
POLICIES = tuple(POLICY_CLASSES)
DEFAULT_POLICY = "qemu-7.2"


def policy_class(name):
    try:
        return POLICY_CLASSES[name]
    except KeyError:
        raise ValueError("unknown policy %r; choose from %s"
                         % (name, ", ".join(POLICIES))) from None
