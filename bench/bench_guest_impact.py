"""What the guest feels during migration: 64 and 512 GiB guests, each loop
placement (iothread: the global lock held for whole iterations, QEMU 2010;
migration-thread: only around the sync, QEMU >= 1.3-1.4) and each interface
(QEMU 2010's byte map, flat, two-level, ring, the real KVM_GET_DIRTY_LOG).

Cells (group "guest impact <size>GiB"):
  sync_<interface>   the timed sync of one iteration (VM.collect of the slot
                     with 2000 scattered dirty pages, re-dirtied untimed: 100 ms
                     of a guest dirtying 20000 pages/s);
                     extra_info carries, for each placement and rate limit, the
                     exit waits (p50/p99/max ns) and the share of vCPU time spent
                     waiting, from the virtual-clock lock model fed with that
                     sync (analysis/guest_stalls.py)
  kernel_<collector> (timed: the whole 0.5 s harness run, not a figure to read)
                     the real kernel (kvm): the guest's write rate and longest
                     stall while another thread runs a classic GET, manual
                     protect + CLEAR (1 GiB chunks) or the dirty ring, with the
                     emulated slot-lock model's numbers and the real/model ratio

kvm cells skip with the reason where /dev/kvm is unusable.
Run: ``pytest bench/bench_guest_impact.py --benchmark-only`` (pytest-benchmark),
or ``python bench/bench_guest_impact.py [--json FILE]`` for the README tables.
"""
import json
import sys

import pytest

import pykvmdirty as kd
from pykvmdirty.analysis import guest_stalls as gs
from pykvmdirty.bindings.constants import WIRE_PAGE_RECORD

from pykvmdirty.analysis.compare import RING_ENTRIES, dirty_pages, gib_to_pages, ring_vcpus

from benchutil import bench_sizes, rounds, untimed

SIZES = bench_sizes(default=(64, 512))


def _kvm_skip(name):
    if name == "kvm":
        ok, why = kd.backend_available("kvm")
        if not ok:
            pytest.skip("kvm backend unavailable here: %s" % why)


@pytest.mark.parametrize("interface", gs.LOOP_INTERFACES)
@pytest.mark.parametrize("size", SIZES)
def test_sync_and_exit_waits(benchmark, size, interface):
    _kvm_skip(interface)
    benchmark.group = "guest impact %gGiB" % size
    benchmark.name = "sync_%s" % interface
    npages = gib_to_pages(size)
    pages = dirty_pages(npages, 2000, 0)
    vcpus = ring_vcpus(2000) if interface == "ring" else 1
    kw = dict(vcpus=vcpus, ring_entries=RING_ENTRIES) if interface == "ring" else {}
    with kd.VM(interface, **kw) as vm:
        vm.set_user_memory_region(0, 0, npages * 4096, kd.MEM_LOG_DIRTY_PAGES)
        vm.collect(0)
        benchmark.pedantic(vm.collect, args=(0,),
                           setup=lambda: untimed(gs.dirty_on_vcpus, vm, pages, vcpus),
                           rounds=rounds(5), iterations=1)
    sync = int(benchmark.stats.stats.median * 1e9)
    for bw in (128 << 20, 0):
        send = gs.send_ns(min(2000, bw // 10 // WIRE_PAGE_RECORD)) if bw else 50_000_000
        for lt in gs.LOOP_THREADS:
            r = gs.placement_model(sync, send, lt, interface == "ring", 2, 1000, 10e-6, 0.05,
                                   1.0, period=100_000_000 if bw else 0)
            key = "%s_%s" % (lt, "128MiBps" if bw else "backlog")
            benchmark.extra_info[key] = {k: r[k] for k in (
                "iteration_ns", "wait_p50_ns", "wait_p99_ns", "wait_max_ns", "slowdown_pct")}


@pytest.mark.parametrize("collector", gs.KERNEL_COLLECTORS)
@pytest.mark.parametrize("size", SIZES)
def test_kernel_lock(benchmark, size, collector):
    _kvm_skip("kvm")
    benchmark.group = "guest impact %gGiB" % size
    benchmark.name = "kernel_%s" % collector
    table = benchmark.pedantic(gs.kernel_side_table, kwargs=dict(
        sizes_gib=(size,), collectors=(collector,), duration=0.5), rounds=1, iterations=1)
    row = table["rows"][-1]
    benchmark.extra_info.update(real=row["real"], model=row["model"],
                                ratio_stall=row.get("ratio_stall"),
                                ratio_hold=row.get("ratio_hold"))


def main(argv):
    out = None
    if "--json" in argv:
        out = argv[argv.index("--json") + 1]
    placement = gs.loop_placement_table(sizes_gib=SIZES, repeats=3)
    print(gs.format_placement(placement))
    print()
    kernel = gs.kernel_side_table(sizes_gib=SIZES, duration=1.0)
    print(gs.format_kernel(kernel))
    if out:
        with open(out, "w") as f:
            json.dump(dict(placement=placement, kernel=kernel), f, indent=1)
            f.write("\n")
        print("wrote %s" % out)


if __name__ == "__main__":
    main(sys.argv[1:])
