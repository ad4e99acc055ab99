"""The internal bindings reachable from Python (issue 20 item 5): a SendRegion
pins its slot, send_pages' count is checked against what C will read, and an
unmatched GlobalLock.unlock() is refused instead of breaking the lock."""
import errno
import gc
import threading

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty.bindings.guest_exits import GlobalLock
from pykvmdirty.bindings.sender import SendRegion, Sender

N = 256


def _vm():
    vm = kd.VM("flat", guest_memory=True)
    vm.set_user_memory_region(0, 0, N << 12, kd.MEM_LOG_DIRTY_PAGES)
    return vm


def test_send_region_pins_its_slot():
    vm = _vm()
    region = SendRegion(vm, 0, 0, N)
    with pytest.raises(kd.KvmDirtyError) as e:  # was: deleted, then read unmapped
        vm.set_user_memory_region(0, 0, 0)
    assert e.value.errno == errno.EBUSY and "SendRegion" in str(e.value)
    s = Sender()
    assert s.send_pages(region, None, N, 0) >= 0  # the memory is still there
    del region
    gc.collect()
    vm.set_user_memory_region(0, 0, 0)  # nothing pins it any more
    assert vm.slots() == []


def test_send_region_of_a_slot_without_memory_names_it():
    vm = kd.VM("flat")
    vm.set_user_memory_region(3, 0, N << 12)
    with pytest.raises(ValueError, match="slot 0x3 has no guest memory"):
        SendRegion(vm, 3, 0, N)
    vm.set_user_memory_region(3, 0, 0)  # a refused region pins nothing


@pytest.mark.parametrize("gfns,n,what", [
    (np.arange(4, dtype=np.uint64), 5, "past the end of gfns"),
    (np.arange(4, dtype=np.uint64), 1 << 40, "past the end of gfns"),
    (None, N + 1, "past the end of the region"),
])
def test_send_pages_count_checked_against_the_array(gfns, n, what):
    vm = _vm()
    region = SendRegion(vm, 0, 0, N)
    s = Sender()
    with pytest.raises(ValueError, match=what):  # was: C read past the array
        s.send_pages(region, gfns, n, 0)
    assert s.position == 0 and s.stats()["pages"] == 0  # nothing half-applied
    assert s.send_pages(region, np.arange(4, dtype=np.uint64), 4, 0) >= 0


def test_send_pages_takes_any_integer_gfns():
    vm = _vm()
    region = SendRegion(vm, 0, 0, N)
    s = Sender()
    assert s.send_pages(region, [1, 2, 3], 3, 0) >= 0
    assert s.stats()["pages"] == 3
    with pytest.raises(ValueError, match="non-negative"):
        s.send_pages(region, np.array([-1]), 1, 0)


def test_global_lock_unlock_without_lock_is_refused():
    gl = GlobalLock(1, 0, 0)
    with pytest.raises(kd.KvmDirtyError) as e:  # was: accepted, next lock() hung
        gl.unlock()
    assert e.value.errno == errno.EPERM and "without a lock()" in str(e.value)
    done = threading.Event()

    def lock_unlock():
        gl.lock("iteration")
        gl.unlock()
        done.set()

    t = threading.Thread(target=lock_unlock, daemon=True)
    t.start()
    assert done.wait(60), "lock() after a refused unlock() hangs"
    with pytest.raises(kd.KvmDirtyError):
        gl.unlock()  # released once already
