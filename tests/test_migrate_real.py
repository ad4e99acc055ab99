"""Pre-copy migration on the real-kernel backends: "uffd" (real stores into
real memory, tracked by userfaultfd write protection) and "kvm" (a real guest
on /dev/kvm performs the writes). Destination == source, page by page, for
the global and per-slot strategies (chunked-clear and ring on kvm too), in
deterministic mode and in real time with concurrent writer threads (2 vCPUs).
Each test skips, with the kernel's reason, where its backend is unavailable.
KVM re-dirtying costs ~10-25 us a page here, so the guests and rates are small."""
import numpy as np
import pytest

import pykvmdirty
from pykvmdirty.migration import migrate
from pykvmdirty.migration.sinks import LocalSink


def need(backend):
    ok, why = pykvmdirty.backend_available(backend)
    if not ok:
        pytest.skip("backend %r unavailable here: %s" % (backend, why))


VIRT = dict(guest_size="32MiB", slots=4, vcpus=2, workload="uniform", rate=5000,
            bandwidth=32 << 20, downtime_limit=0.05, max_passes=5, seed=4)
RT = dict(guest_size="16MiB", slots=4, vcpus=2, mode="realtime", workload="uniform",
          bandwidth=32 << 20, downtime_limit=0.005, max_passes=4, duration_limit=20,
          populate=1.0, fill="random", seed=5)


def guest_values(sink):
    """First 8 bytes of every destination page."""
    return np.concatenate([sink.dest.memory(i).view(np.uint64)[::512]
                           for i in range(len(sink.dest.regions()))])


def check(r, sink=None):
    assert r.verified is True, r.mismatched_pages
    assert r.passes[0].kind == "bulk" and r.passes[-1].kind == "stop-and-copy"
    assert r.npasses >= 3, [p.as_dict() for p in r.passes]
    assert r.workload_writes > 0
    assert r.vm_stats["writes"] >= r.workload_writes


@pytest.mark.parametrize("backend,strategy,extra", [
    ("uffd", "global", {}),
    ("uffd", "per-slot", {}),
    ("kvm", "global", {}),
    ("kvm", "per-slot", {}),
    ("kvm", "chunked-clear", {}),
    ("kvm", "ring", dict(ring_entries=512)),
], ids=lambda x: x if isinstance(x, str) else "")
def test_deterministic_real_backend_verifies(backend, strategy, extra):
    need(backend)
    sink = LocalSink()
    r = migrate(backend=backend, strategy=strategy, sink=sink, **VIRT, **extra)
    check(r)
    # the writes of the workload (small values; populate stores 2**62) made it
    # to the destination: the source memory is the memory the kernel tracked
    vals = guest_values(sink)
    assert ((vals > 0) & (vals < 1 << 32)).sum() > 100
    if strategy == "ring":
        assert r.ring_full_events > 0  # rings filled mid-pass and were reaped


@pytest.mark.parametrize("backend,strategy,rate", [
    ("uffd", "global", 50000),
    ("uffd", "per-slot", 50000),
    ("kvm", "global", 3000),
], ids=lambda x: str(x))
def test_realtime_real_backend_concurrent_writers_verify(backend, strategy, rate):
    need(backend)
    r = migrate(backend=backend, strategy=strategy, rate=rate, **RT)
    check(r)


def test_realtime_uffd_sync_tracking_verifies():
    need("uffd")
    r = migrate(backend="uffd", strategy="global", rate=20000, dirty_tracking="uffd_sync", **RT)
    check(r)


def test_chunked_clear_on_uffd_is_a_clear_error():
    with pytest.raises(ValueError, match="chunked-clear.*uffd backend lacks"):
        migrate(backend="uffd", strategy="chunked-clear", guest_size="8MiB")
