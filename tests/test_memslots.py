"""KVM_SET_USER_MEMORY_REGION rules, checked in KVM's order with KVM's errnos."""
import errno

import pytest

import pykvmdirty as kd
from conftest import GIB, LOG, MIB, make_vm

BACKENDS = ["flat", "twolevel", "bytemap", "ring", "hier", "kvm"]


@pytest.fixture(params=BACKENDS)
def vm(request):
    v = make_vm(request.param)
    yield v
    v.close()


def err(fn, *a, **kw):
    with pytest.raises(kd.KvmDirtyError) as e:
        fn(*a, **kw)
    return e.value.errno


def test_rule_table(vm):
    vm.set_user_memory_region(0, 0, 64 * MIB, LOG)
    cases = [
        # (slot, gpa, size, flags) -> errno
        ((32764, 1 * GIB, 4096, 0), errno.EINVAL),          # id >= KVM_USER_MEM_SLOTS
        ((1, 1 * GIB, 4096, 0x80), errno.EINVAL),           # unknown flag
        ((1, 1 * GIB, 4095, 0), errno.EINVAL),              # size not page aligned
        ((1, 1 * GIB + 1, 4096, 0), errno.EINVAL),          # address not page aligned
        ((vm.address_spaces << 16 | 1, 1 * GIB, 4096, 0), errno.EINVAL),  # no such as
        ((1, (1 << 64) - 4096, 8192, 0), errno.EINVAL),     # wraps around
        ((1, 0, (1 << 31) << 12, 0), errno.EINVAL),          # 2^31 pages
        ((5, 0, 0, 0), errno.EINVAL),                       # delete a missing slot
        ((0, 0, 128 * MIB, LOG), errno.EINVAL),             # resize an existing slot
        ((1, 32 * MIB, 64 * MIB, 0), errno.EEXIST),         # overlap
        ((1, 60 * MIB, 8 * MIB, 0), errno.EEXIST),          # overlap at the end
    ]
    for (slot, gpa, size, flags), want in cases:
        got = err(vm.set_user_memory_region, slot, gpa, size, flags)
        assert got == want, ((slot, gpa, size, flags), errno.errorcode[got])
    # state unchanged by all of the above
    assert [(s.slot, s.base_gfn, s.npages) for s in vm.slots()] == [(0, 0, 16384)]


def test_create_move_delete(vm):
    vm.set_user_memory_region(1, 1 * GIB, 2 * MIB, LOG)
    if vm.address_spaces > 1:
        vm.set_user_memory_region(1 << 16 | 1, 1 * GIB, 2 * MIB, 0)  # as 1 may overlap as 0
    vm.write([GIB >> 12], value=1)
    vm.set_user_memory_region(1, 4 * GIB, 2 * MIB, LOG)  # move keeps the log
    assert vm.slot_info(1).base_gfn == (4 * GIB) >> 12
    got = vm.collect(1)
    assert got.tolist() == [(4 * GIB) >> 12]
    vm.set_user_memory_region(1, 4 * GIB, 0)
    assert err(vm.collect, 1) == errno.ENOENT


def test_max_pages_is_accepted():
    # 2^31 - 1 pages is the largest slot KVM accepts; logs are allocated for real.
    vm = kd.VM("flat")
    vm.set_user_memory_region(0, 0, ((1 << 31) - 1) << 12, 0)
    assert vm.slot_info(0).npages == (1 << 31) - 1


def test_log_toggle(vm):
    vm.set_user_memory_region(3, 0, 8 * MIB, 0)
    assert err(vm.collect, 3) == errno.ENOENT
    if vm.backend != "ring":
        assert err(vm.get_dirty_log, 3) == errno.ENOENT
    vm.write([5])  # untracked
    vm.set_user_memory_region(3, 0, 8 * MIB, LOG)
    assert vm.collect(3).tolist() == []
    vm.write([5, 6])
    vm.set_user_memory_region(3, 0, 8 * MIB, 0)   # frees the log
    vm.set_user_memory_region(3, 0, 8 * MIB, LOG)  # fresh, empty log
    # a ring keeps the entries pushed before the toggle (user space still
    # harvests them, as from KVM's ring); a bitmap log starts empty
    assert vm.collect(3).tolist() == ([5, 6] if vm.backend == "ring" else [])
    if vm.backend != "kvm":
        assert vm.stats["untracked_writes"] == 1


def test_write_outside_slots_is_efault_and_applies_nothing(vm):
    vm.set_user_memory_region(0, 0, 4 * MIB, LOG)
    before = vm.stats["writes"]
    assert err(vm.write, [1, 2, 1 << 40]) == errno.EFAULT
    assert vm.stats["writes"] == before
    assert vm.collect(0).tolist() == []


def test_readonly_slot_write_is_efault(vm):
    if vm.backend == "kvm":
        pytest.skip("a write to a read-only slot is an MMIO exit on real KVM")
    vm.set_user_memory_region(0, 0, 4 * MIB, kd.MEM_READONLY | LOG)
    assert err(vm.write, [1]) == errno.EFAULT
