"""Dirty ring: KVM's entry layout, soft-full exit, harvest/reset state machine."""
import errno

import numpy as np
import pytest

import pykvmdirty as kd
from conftest import LOG, MIB, make_vm

RING_BACKENDS = ["ring", "kvm"]


@pytest.fixture(params=RING_BACKENDS)
def vm(request):
    v = make_vm(request.param, ring_entries=4096, vcpus=2)
    v.set_user_memory_region(0, 0, 64 * MIB, LOG)
    if v.address_spaces > 1:
        v.set_user_memory_region(1 << 16 | 7, 0, 4 * MIB, LOG)  # as 1: not written by vCPUs
    v.set_user_memory_region(7, 1 << 32, 4 * MIB, LOG)
    yield v
    v.close()


def test_layout():
    dt = kd.DIRTY_GFN_DTYPE
    assert dt.itemsize == 16
    assert [dt.fields[f][1] for f in ("flags", "slot", "offset")] == [0, 4, 8]


def test_soft_full_exit_harvest_reset(vm):
    pages = np.arange(5000, dtype=np.uint64)
    r = vm.write(pages)
    assert r.ring_full and r.applied == 4096 - 64  # 4032, as the real KVM here
    assert vm.ring_usage(0) == (4032, 4032)
    # refused until reset
    r2 = vm.write(pages[r.applied:])
    assert r2.applied == 0 and r2.ring_full
    ents = vm.harvest(0)
    assert len(ents) == 4032
    assert np.all(ents["flags"] == kd.DIRTY_GFN_F_DIRTY)
    assert np.array_equal(ents["offset"], pages[:4032])  # in order
    assert np.all(ents["slot"] == 0)
    ring = vm.ring(0)
    assert np.all(ring["flags"][:4032] == kd.DIRTY_GFN_F_RESET)
    assert len(vm.harvest(0)) == 0  # nothing new
    assert vm.reset_dirty_rings() == 4032
    assert vm.ring_usage(0)[0] == 0
    r3 = vm.write(pages[r.applied:])
    assert r3.applied == 5000 - 4032 and not r3.ring_full


def test_rewrite_of_dirty_page_pushes_nothing(vm):
    vm.write([1, 2, 3])
    vm.write([1, 2, 3, 3, 2, 1])
    assert len(vm.harvest(0)) == 3
    assert vm.reset_dirty_rings() == 3
    vm.write([1, 2])  # protected again: faults and pushes
    assert vm.harvest(0)["offset"].tolist() == [1, 2]


def test_slot_field_and_vcpus(vm):
    vm.write([(1 << 32 >> 12) + 5], vcpu=1)
    e = vm.harvest(1)
    assert e["slot"].tolist() == [7] and e["offset"].tolist() == [5]
    assert len(vm.harvest(0)) == 0
    assert vm.harvest(1, gfns=True).tolist() == []  # already harvested


def test_collect_keeps_other_slots(vm):
    g7 = (1 << 32 >> 12) + 9
    vm.write([4, g7, 8])
    assert vm.collect(0).tolist() == [4, 8]
    assert vm.collect(7).tolist() == [g7]
    vm.write([4])
    assert vm.collect(0).tolist() == [4]


def test_get_and_clear_are_enxio(vm):
    for fn in (lambda: vm.get_dirty_log(0), lambda: vm.clear_dirty_log(0, 0, 64)):
        with pytest.raises(kd.KvmDirtyError) as e:
            fn()
        assert e.value.errno == errno.ENXIO


@pytest.mark.parametrize("entries,want", [
    (3 * 4096, errno.EINVAL),   # not a power of two
    (128, errno.EINVAL),        # below one page of entries
    (0, errno.EINVAL),
    (131072, errno.E2BIG),      # above 65536 entries
])
def test_bad_sizes(entries, want):
    with pytest.raises(kd.KvmDirtyError) as e:
        kd.VM("ring", ring_entries=entries)
    assert e.value.errno == want


def test_pml_soft_limit_and_min_size():
    # PML reserves another 512 entries: 4096 - 64 - 512 = 3520
    vm = kd.VM("ring", ring_entries=4096, dirty_tracking="pml")
    assert vm.ring_usage(0) == (0, 3520)
    with pytest.raises(kd.KvmDirtyError) as e:
        kd.VM("ring", ring_entries=512, dirty_tracking="pml")  # < 64 + 512 entries
    assert e.value.errno == errno.EINVAL
    kd.VM("ring", ring_entries=1024, dirty_tracking="pml")


def test_pml_ring_full_after_drain():
    vm = kd.VM("ring", ring_entries=4096, dirty_tracking="pml")
    vm.set_user_memory_region(0, 0, 64 * MIB, LOG)
    r = vm.write(np.arange(5000, dtype=np.uint64))
    # entries reach the ring only when the 512-entry PML buffer drains: the
    # drain that reaches 3520 (at 3584 = 7 * 512) exits
    assert r.ring_full and r.applied == 3584
    assert vm.ring_usage(0)[0] == 3584
    assert len(vm.harvest(0)) == 3584
