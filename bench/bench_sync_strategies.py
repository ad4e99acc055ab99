"""Sync strategies side by side, deterministic (virtual clock): global sync vs
per-slot polling vs chunked clear on a 64 GiB guest in 16 slots with a hotspot
workload. Sample-to-send latency p50/p99 and redundant sends are recorded in
extra_info (they are virtual-clock figures, identical on every run); the
benchmark time is the host CPU time of the whole migration.

    python -m pytest bench/bench_sync_strategies.py --benchmark-only -s

KVMDIRTY_BENCH_GIB=8 shrinks the guest for a quick look.
"""
import os

import pytest

from pykvmdirty.migration import migrate

GIB = int(os.environ.get("KVMDIRTY_BENCH_GIB", "64"))
CASE = dict(guest_size="%dGiB" % GIB, slots=16, backend="flat", workload="hotspot",
            rate=100_000, hot_fraction=0.01, hot_share=0.9, bandwidth=1 << 30,
            populate=0.0, sink="null", max_passes=8, downtime_limit=0.3, seed=1,
            step=0.02)
RESULTS = {}


def _run(strategy):
    return migrate(strategy=strategy, **CASE)


@pytest.mark.parametrize("strategy", ["global", "per-slot", "chunked-clear"])
def test_sync_strategy(benchmark, strategy):
    report = benchmark.pedantic(_run, args=(strategy,), rounds=1, iterations=1)
    it = [p for p in report.passes if p.kind == "iterate"]
    info = dict(
        passes=report.npasses,
        iterate_p50_ms=[round(p.latency_p50_ns / 1e6, 2) for p in it],
        iterate_p99_ms=[round(p.latency_p99_ns / 1e6, 2) for p in it],
        redundant_iterate=sum(p.redundant for p in it),
        redundant_total=report.total("redundant"),
        pages_sent_iterate=sum(p.pages_sent for p in it),
        downtime_ms=round(report.downtime_ns / 1e6, 2),
        total_s=round(report.total_ns / 1e9, 3),
    )
    benchmark.extra_info.update(info)
    RESULTS[strategy] = info
    print("\n%-14s %s" % (strategy, info))
    assert report.npasses >= 3
