"""The convergence policies on small cases worked out by hand (a fake loop whose
clock, bytes and bitmap the test sets), then QEMU 7.2's rules on real runs of
two backends."""
import pytest

import pykvmdirty as kd
from pykvmdirty.migration.config import MigrationConfig
from pykvmdirty.migration.policy import (PassPolicy, Qemu72Policy, next_throttle,
                                         policy_class)
from pykvmdirty.migration.report import PassMetrics

MS = 1_000_000
PAGE = 4096


class FakePending:
    def __init__(self, count):
        self.count = count


class FakeLoop:
    """What a policy reads and calls: clock, bytes sent, the bitmap's count,
    sync() (adds `dirty_at_sync` pages, all new), set_throttle, the open pass."""

    def __init__(self, pending=0):
        self.t = 0
        self.sent = 0
        self.pending = FakePending(pending)
        self.dirty_at_sync = 0
        self.syncs = 0
        self.throttles = []
        self.pm = PassMetrics(1, "bulk")
        self.converged = False
        self.waits = 0

    def clock(self):
        return self.t

    def elapsed_ns(self):
        return self.t

    def bytes_sent(self):
        return self.sent

    def sync(self):
        self.syncs += 1
        self.pending.count += self.dirty_at_sync
        return self.dirty_at_sync

    def set_throttle(self, pct):
        self.throttles.append(pct)

    def wait_window(self):
        self.waits += 1


def qemu(**kw):
    cfg = MigrationConfig(guest_size="8MiB", slots=1, **kw)
    return Qemu72Policy(cfg)


def test_threshold_is_the_last_windows_bandwidth_times_the_downtime_limit():
    p, loop = qemu(downtime_limit=0.3), FakeLoop()
    p.start(loop)
    assert loop.syncs == 1 and p.threshold == 0      # setup syncs once; no window yet
    loop.t, loop.sent = 60 * MS, 3_000_000
    p.after_iteration(loop, "time-cap")
    assert p.threshold == 0                          # a window closes after >= 100 ms
    loop.t, loop.sent = 125 * MS, 10_000_000
    p.after_iteration(loop, "rate-limited")
    # 10 MB in 125 ms: 80 MB/s x 0.3 s = 24 MB; a rate-limited iteration waits
    assert p.bandwidth == pytest.approx(80e6) and p.threshold == pytest.approx(24e6)
    assert loop.waits == 1
    loop.t, loop.sent = 200 * MS, 13_000_000         # 75 ms later: the window is still open
    p.after_iteration(loop, "time-cap")
    assert p.threshold == pytest.approx(24e6)


def test_sync_only_below_the_threshold_then_complete_if_still_below():
    p, loop = qemu(downtime_limit=0.3), FakeLoop(pending=10_000)   # 40.96 MB pending
    p.start(loop)
    p.threshold = 24e6
    assert not p.should_complete(loop) and loop.syncs == 1   # above: no sync, iterate
    loop.pending.count = 5000                                # 20.48 MB: below
    loop.dirty_at_sync = 1000                                # +4.1 MB: 24.6 MB, above again
    assert not p.should_complete(loop) and loop.syncs == 2
    loop.pending.count = 4000
    loop.dirty_at_sync = 100                                 # 16.8 MB after the sync
    assert p.should_complete(loop) and loop.syncs == 3 and loop.converged
    # nothing pending and a zero threshold (no window yet): complete without a sync
    p2, loop2 = qemu(), FakeLoop(pending=0)
    p2.start(loop2)
    assert p2.should_complete(loop2) and loop2.syncs == 1


def test_auto_converge_checks_once_a_second_on_new_bits_twice_then_steps():
    p, loop = qemu(auto_converge=True), FakeLoop(pending=10**6)
    p.start(loop)                          # t=0: the first check's period begins
    loop.dirty_at_sync = 1000              # 4.1 MB newly set per sync
    p.threshold = 10**12                   # every should_complete syncs

    def sync_at(t_ms, sent):
        loop.t, loop.sent = t_ms * MS, sent
        loop.pending.count = 1000          # below the threshold: the loop syncs
        p.should_complete(loop)

    sync_at(500, 1_000_000)                # < 1 s since the check: no check
    assert p.high == 0 and loop.throttles == []
    sync_at(1100, 2_000_000)               # period: 2 x 4.1 MB new > 50 % of 2 MB sent
    assert p.high == 1 and loop.throttles == []
    sync_at(1500, 2_500_000)               # < 1 s since the last check
    assert p.high == 1
    sync_at(2200, 60_000_000)              # 2 x 4.1 MB new vs 58 MB sent: below 50 %
    assert p.high == 1 and loop.throttles == []   # a miss does not reset the count
    sync_at(3300, 61_000_000)              # 4.1 MB new > 0.5 MB: second time -> 20 %
    assert loop.throttles == [20] and p.high == 0 and p.triggers == 1
    pcts = [next_throttle(0)]
    while pcts[-1] < 99:
        pcts.append(next_throttle(pcts[-1]))
    assert pcts[:3] == [20, 30, 40] and pcts[-2:] == [90, 99]


def test_pass_policy_switches_when_the_expected_downtime_fits():
    cfg = MigrationConfig(guest_size="8MiB", slots=1, downtime_limit=0.3, max_passes=30)
    p, loop = PassPolicy(cfg), FakeLoop()
    loop.passes = []
    loop.collects_per_slot = False
    loop.npasses = lambda: 2
    assert not p.should_complete(loop)     # the bulk pass first, no sync
    loop.last_pass = PassMetrics(1, "bulk")
    loop.last_pass.bandwidth = 100e6       # 100 MB/s x 0.3 s = 30 MB fits
    loop.dirty_at_sync = 8000              # 32.8 MB: does not fit
    assert not p.should_complete(loop) and loop.syncs == 1
    loop.pending.count = 0
    loop.dirty_at_sync = 7000              # 28.7 MB: fits
    assert p.should_complete(loop) and loop.converged


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown policy 'qemu-9'"):
        policy_class("qemu-9")
    with pytest.raises(ValueError, match="unknown policy"):
        MigrationConfig(policy="qemu-9")


@pytest.mark.parametrize("backend,strategy", [("flat", "chunked-clear"), ("ring", "ring")])
def test_qemu_rules_on_two_backends(backend, strategy):
    # an idle guest at no rate limit: setup syncs, the bulk pass sends every page,
    # and with nothing dirty the loop completes: setup's sync + at most one below
    # the threshold + the final one; nothing is throttled
    r = kd.migrate(guest_size="64MiB", slots=2, backend=backend, strategy=strategy,
                   workload="idle", bandwidth=0, policy="qemu-7.2", populate=0.1)
    assert r.verified and r.status == "completed" and r.converged
    assert r.total("pages_sent") == 16384 and 2 <= r.dirty_sync_count <= 3
    # a guest that dirties faster than the link drains: QEMU never converges
    # (here: gives up after max_passes syncs, status "timeout"); auto-converge
    # throttles it in the steps QEMU takes
    r = kd.migrate(guest_size="16MiB", slots=1, backend=backend, strategy=strategy,
                   workload="uniform", rate=50000, bandwidth=2 << 20, downtime_limit=0.01,
                   auto_converge=True, max_passes=40, policy="qemu-7.2")
    assert r.verified
    assert r.auto_converge_triggers >= 1
    assert r.final_throttle_pct == min(20 + 10 * (r.auto_converge_triggers - 1), 99)
