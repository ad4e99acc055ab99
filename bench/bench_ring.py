"""Dirty ring: harvest and KVM_RESET_DIRTY_RINGS per entry, with rings of
4096 and 65536 entries filled to their soft limit (size - 64). Compare with
the real kernel's prices `pykvmdirty calibrate` measures (ring_harvest_ns,
ring_reset_ns; the shipped ones in pykvmdirty/data/cost_model.json)."""
import numpy as np
import pytest


from benchutil import GIB_PAGES, make_vm, rounds, untimed

ENTRIES = [4096, 65536]


def _setup(entries):
    vm = make_vm("ring", 4 * GIB_PAGES, ring_entries=entries)
    n = entries - 64  # soft limit (KD_RING_RESERVED_ENTRIES), no PML
    gfns = np.random.default_rng(1).choice(4 * GIB_PAGES, n, replace=False).astype(np.uint64)
    return vm, gfns


def _per_entry(benchmark, n):
    benchmark.extra_info["entries"] = n
    benchmark.extra_info["ns_per_entry_median"] = benchmark.stats.stats.median * 1e9 / n


@pytest.mark.parametrize("entries", ENTRIES)
def test_harvest(benchmark, entries):
    vm, gfns = _setup(entries)
    benchmark.group = "ring %d entries" % entries

    def setup():
        vm.reset_dirty_rings()
        res = vm.write(gfns)
        assert res.applied == gfns.size

    try:
        out = benchmark.pedantic(vm.harvest, args=(0,), setup=setup, rounds=rounds(),
                                 iterations=1)
        assert out.size == gfns.size
        _per_entry(benchmark, gfns.size)
    finally:
        vm.close()


@pytest.mark.parametrize("entries", ENTRIES)
def test_reset(benchmark, entries):
    vm, gfns = _setup(entries)
    benchmark.group = "ring %d entries" % entries

    def setup():
        vm.write(gfns)
        vm.harvest(0)

    try:
        n = benchmark.pedantic(vm.reset_dirty_rings, setup=setup, rounds=rounds(),
                               iterations=1)
        assert n == gfns.size
        _per_entry(benchmark, gfns.size)
    finally:
        vm.close()


@pytest.mark.parametrize("entries", ENTRIES)
def test_harvest_and_reset(benchmark, entries):
    vm, gfns = _setup(entries)
    benchmark.group = "ring %d entries" % entries

    def cycle():
        out = vm.harvest(0)
        vm.reset_dirty_rings()
        return out.size

    try:
        n = benchmark.pedantic(cycle, setup=lambda: untimed(vm.write, gfns), rounds=rounds(),
                               iterations=1)
        assert n == gfns.size
        _per_entry(benchmark, gfns.size)
    finally:
        vm.close()
