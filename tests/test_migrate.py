"""Pre-copy migration in deterministic (virtual clock) mode: every backend and
sync strategy verifies; exact counts for the rate limiter, zero pages, time cap,
auto-converge and max passes; bad arguments are clear errors."""
import pytest

from pykvmdirty.migration import MigrationError, migrate
from pykvmdirty.migration.policy import POLICIES

COMBOS = [(b, s) for b in ("flat", "twolevel", "bytemap", "hier") for s in
          ("global", "per-slot", "chunked-clear")] + [("ring", s) for s in
                                                       ("global", "per-slot", "ring")]
SMALL = dict(guest_size="32MiB", slots=4, rate=20000, bandwidth=32 << 20, seed=1,
             downtime_limit=0.05, max_passes=6, policy="passes")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend,strategy", COMBOS, ids=lambda x: x)
def test_every_backend_and_strategy_verifies(backend, strategy, policy):
    # small rings so that they fill and get reaped mid-pass
    extra = dict(ring_entries=512) if backend == "ring" else {}
    # QEMU's rules switch over only when the pending bytes fit bandwidth x limit:
    # 20k writes/s on a 400-page hot set need more than 50 ms at 32 MiB/s
    kw = dict(SMALL, policy=policy, downtime_limit=0.05 if policy == "passes" else 0.3)
    r = migrate(backend=backend, strategy=strategy, **kw, **extra)
    assert r.verified is True, r.mismatched_pages
    assert r.passes[0].kind == "bulk" and r.passes[-1].kind == "stop-and-copy"
    assert r.status == "completed" and r.policy == policy
    if policy == "passes":
        assert r.passes[0].pages_sent == 8192   # the bulk pass sends every page
        assert r.npasses >= 3  # at least one iterate pass at this dirty rate
    else:
        # every page went out at least once; setup, one sync in the loop, the final one
        assert r.total("pages_sent") >= 8192 and r.dirty_sync_count >= 3
    if backend == "ring":
        assert r.ring_full_events > 0


def test_deterministic_repeatable():
    a = migrate(strategy="per-slot", **SMALL).as_dict()
    b = migrate(strategy="per-slot", **SMALL).as_dict()
    a.pop("vm_stats"), b.pop("vm_stats")
    assert a == b


def test_strategies_differ_in_latency_on_the_same_workload():
    g = migrate(strategy="global", **SMALL)
    p = migrate(strategy="per-slot", **SMALL)
    # per-slot samples each slot just before sending it: younger information
    it_g = [x for x in g.passes if x.kind == "iterate"]
    it_p = [x for x in p.passes if x.kind == "iterate"]
    assert it_p[0].latency_p99_ns < it_g[0].latency_p99_ns


@pytest.mark.parametrize("zero_pages", ["header", "full"])
def test_rate_limit_windows_never_exceed_budget(zero_pages):
    bw = 8 << 20
    r = migrate(guest_size="32MiB", slots=2, rate=5000, bandwidth=bw, window_log=100000,
                zero_pages=zero_pages, seed=2, max_passes=6)
    assert r.verified
    log = r.window_log
    assert r.window_budget == bw // 10
    assert log.size > 20
    # the stop-and-copy phase is not rate limited: check the iterative phase
    limited = log[:-3]
    assert limited.max() <= bw // 10
    assert limited.max() > bw // 10 - 4104  # the limiter fills windows, not just respects them
    assert r.total("rate_waits") > 0


def test_zero_pages_both_accountings():
    kw = dict(guest_size="16MiB", slots=2, workload="idle", rate=0, populate=0.0,
              bandwidth=64 << 20)
    h = migrate(zero_pages="header", **kw)
    f = migrate(zero_pages="full", **kw)
    for r in (h, f):
        assert r.verified
        assert r.passes[0].zero_pages == r.passes[0].pages_sent == 4096
        assert r.destination["zero_pages"] == 4096 and r.destination["pages"] == 0
    assert h.passes[0].accounted_bytes == 4096 * 9
    assert f.passes[0].accounted_bytes == 4096 * 4104
    assert h.passes[0].bytes == f.passes[0].bytes  # same wire bytes either way
    # charged as full pages, the bulk pass takes (much) longer on the same link
    assert f.passes[0].duration_ns > 10 * h.passes[0].duration_ns


def test_time_cap_ends_iterations():
    r = migrate(guest_size="64MiB", slots=2, rate=10000, bandwidth=16 << 20, max_wait=0.05,
                policy="passes")
    assert r.verified
    assert r.total("time_cap_exits") > 10


def test_auto_converge_triggers_and_throttles():
    kw = dict(guest_size="32MiB", slots=2, workload="uniform", rate=20000,
              bandwidth=16 << 20, max_passes=12, seed=5, policy="passes")
    off = migrate(**kw)
    on = migrate(auto_converge=True, **kw)
    assert off.verified and on.verified
    assert off.auto_converge_triggers == 0
    assert on.auto_converge_triggers >= 1 and on.final_throttle_pct >= 20
    assert on.final_throttle_pct == min(20 + 10 * (on.auto_converge_triggers - 1), 99)
    throttled = [p for p in on.passes if p.throttle_pct]
    assert throttled and throttled[0].throttle_pct == 20
    assert on.downtime_ns < off.downtime_ns


def test_max_passes_forces_stop_and_copy():
    r = migrate(guest_size="32MiB", slots=2, workload="uniform", rate=50000,
                bandwidth=4 << 20, max_passes=3, policy="passes")
    assert r.npasses == 4 and not r.converged and r.verified


def test_migration_test_workload_and_redundant_sends():
    r = migrate(guest_size="16MiB", slots=2, workload="migration-test", rate=30000,
                bandwidth=16 << 20)
    assert r.verified
    # pages of the sweep are resent because they changed, never redundantly,
    # except those sent before the sweep wrote them during the bulk pass
    it = [p for p in r.passes if p.kind == "iterate"]
    assert all(p.redundant == 0 for p in it)


def test_null_sink_counts_without_verifying():
    r = migrate(sink="null", **SMALL)
    assert r.verified is None and r.bytes > 0


def test_json_report(tmp_path):
    r = migrate(**SMALL)
    import json
    path = tmp_path / "r.json"
    r.to_json(str(path))
    d = json.loads(path.read_text())
    assert d["totals"]["verified"] is True
    assert len(d["passes"]) == r.npasses
    assert {"latency_p50_ns", "latency_p99_ns", "redundant", "collect_ns", "scan_ns",
            "send_ns", "duration_ns", "zero_pages"} <= set(d["passes"][0])


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(bandwidth=-1), ValueError, "bandwidth must not be negative"),
    (dict(bandwidth=1000), ValueError, "below one page record"),
    (dict(clear_shift=5), ValueError, "clear_shift must be in 6..31"),
    (dict(clear_shift=32), ValueError, "clear_shift must be in 6..31"),
    (dict(strategy="sometimes"), ValueError, "unknown strategy 'sometimes'"),
    (dict(strategy="ring"), ValueError, "needs the ring"),
    (dict(backend="ring", strategy="chunked-clear"), ValueError, "needs a bitmap backend"),
    (dict(mode="fast"), ValueError, "unknown mode 'fast'"),
    (dict(guest_size="12345"), ValueError, "multiple of 4096"),
    (dict(guest_size="lots"), ValueError, "size like"),
    (dict(slots=0), ValueError, "slots must be >= 1"),
    (dict(downtime_limit=0), ValueError, "downtime_limit must be >"),
    (dict(zero_pages="some"), ValueError, "zero_pages must be"),
    (dict(bandwidth="fast"), ValueError, "bandwidth must be a rate like"),
    (dict(bandwidth=[1]), TypeError, "bandwidth must be a rate like"),
    (dict(max_passes=0), ValueError, "max_passes must be >= 1"),
    (dict(sink="carrier-pigeon"), ValueError, "unknown sink"),
    (dict(workload="bursty"), ValueError, "unknown workload 'bursty'"),
    (dict(rate=-3), ValueError, "rate must be >= 0"),
    (dict(cost_model={"warp_ns": 1}), ValueError, "unknown cost model field.*warp_ns"),
])
def test_bad_arguments(kw, exc, msg):
    args = dict(guest_size="8MiB")
    args.update(kw)
    with pytest.raises(exc, match=msg):
        migrate(**args)


def test_sink_failure_is_a_migration_error():
    class Broken:
        encodes = True
        name = "broken"

        def open(self, gpas, sizes):
            pass

        def send(self, view):
            from pykvmdirty.errors import SinkError
            raise SinkError("disk on fire")

        def finish(self):
            return None

        def close(self):
            pass
    with pytest.raises(MigrationError, match="disk on fire"):
        migrate(guest_size="8MiB", sink=Broken())


def test_passes_say_where_the_time_went():
    # each pass: pages its sync re-protected, and the guest's vCPU time spent on
    # dirty tracking in it; together the guest's total
    r = migrate(guest_size="32MiB", slots=2, rate=20000, bandwidth=16 << 20, seed=3)
    it = [p for p in r.passes if p.kind == "iterate"]
    assert it and all(p.pages_reprotected >= 0 for p in r.passes)
    # (the rest were re-protected when logging started, before the first pass)
    assert 0 < sum(p.pages_reprotected for p in r.passes) <= r.vm_stats["pages_reprotected"]
    assert any(p.pages_reprotected > 0 for p in it)
    total = sum(p.guest_tracking_ns for p in r.passes)
    assert total == pytest.approx(r.guest["tracking_ns"], rel=1e-9) and total > 0
    assert "guest ms" in r.summary()
