"""The userfaultfd backend (real stores, the kernel tracks them) reports the
same dirty sets as the emulated flat log for the same stores."""
import errno

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pykvmdirty as kd
from conftest import LOG, MIB, bits_to_set, make_vm

MODES = ["write_protect", "uffd_sync", "mprotect"]
SLOTS = [(0, 0, 2048), (3, 1 << 20, 700)]  # (id, base_gfn, npages)


def pair(mode):
    u = make_vm("uffd", mode)
    f = kd.VM("flat")
    for sid, base, n in SLOTS:
        for vm in (u, f):
            vm.set_user_memory_region(sid, base << 12, n << 12, LOG)
    return u, f


ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.lists(st.one_of(st.integers(0, 2047),
                                                 st.integers(1 << 20, (1 << 20) + 699)),
                                       max_size=30)),
    st.tuples(st.just("c"), st.sampled_from([0, 3]), st.integers(0, 2048), st.integers(0, 2048)),
    st.tuples(st.just("g"), st.sampled_from([0, 3])),
), max_size=20)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(seq=ops)
def test_same_dirty_sets_as_flat(mode, seq):
    u, f = pair(mode)
    try:
        for o in seq:
            if o[0] == "w":
                assert u.write(o[1]).applied == f.write(o[1]).applied == len(o[1])
            elif o[0] == "c":
                n = dict((s, n) for s, _, n in SLOTS)[o[1]]
                first = min(o[2], n)
                num = min(o[3], n - first)
                assert u.collect(o[1], first, num).tolist() == f.collect(o[1], first, num).tolist()
            else:
                assert bits_to_set(u.get_dirty_log(o[1])) == bits_to_set(f.get_dirty_log(o[1]))
        for sid, _, _ in SLOTS:
            assert u.collect(sid).tolist() == f.collect(sid).tolist()
    finally:
        u.close()
        f.close()


def test_stores_land_in_memory():
    vm = make_vm("uffd")
    vm.set_user_memory_region(0, 0, 4 * MIB, LOG)
    vm.write([3, 9], value=0xDEADBEEF)
    words = vm.slot_memory(0).view(np.uint64)
    assert words[3 * 512] == words[9 * 512] == 0xDEADBEEF
    assert vm.collect(0).tolist() == [3, 9]


def test_manual_protect_is_not_supported():
    vm = make_vm("uffd")
    with pytest.raises(kd.KvmDirtyError) as e:
        vm.enable_manual_protect()
    assert e.value.errno == errno.EOPNOTSUPP


def test_fallback_modes_only_on_uffd():
    for mode in ("uffd_sync", "mprotect"):
        with pytest.raises(kd.KvmDirtyError) as e:
            kd.VM("flat", dirty_tracking=mode)
        assert e.value.errno == errno.EINVAL
