"""Every bad call gets a clear error and leaves the VM as it was."""
import errno

import numpy as np
import pytest

import pykvmdirty as kd
from conftest import LOG


def snapshot(vm):
    return (vm.slots(), vm.stats)


@pytest.fixture(params=["flat", "twolevel", "bytemap", "ring", "hier"])
def vm(request):
    v = kd.VM(request.param, vcpus=2)
    v.set_user_memory_region(0, 0, 1 << 24, LOG)
    v.write([1, 2, 3])
    yield v
    v.close()


PY_ERRORS = [
    # (call, exception, text that must appear in the message)
    (lambda vm: vm.write([-1]), ValueError, "-1"),
    (lambda vm: vm.write([1.5]), TypeError, "float"),
    (lambda vm: vm.write(np.zeros((2, 2), dtype=np.uint64)), ValueError, "shape"),
    (lambda vm: vm.write([1], vcpu=2), ValueError, "vcpu"),
    (lambda vm: vm.write([1], vcpu=-1), ValueError, "-1"),
    (lambda vm: vm.write([1], value=-5), ValueError, "-5"),
    (lambda vm: vm.set_user_memory_region(-1, 0, 4096), ValueError, "slot"),
    (lambda vm: vm.set_user_memory_region(1, "0", 4096), TypeError, "guest_phys_addr"),
    (lambda vm: vm.collect(0, -1), ValueError, "first_page"),
    (lambda vm: vm.collect(0, 1 << 40), ValueError, "first_page"),
    (lambda vm: vm.clear_dirty_log(0, 0, 64, np.zeros(1, dtype=np.int32)), TypeError, "uint64"),
    (lambda vm: vm.clear_dirty_log(0, 0, 128, np.zeros(1, dtype=np.uint64)), ValueError, "2 words"),
    (lambda vm: vm.clear_dirty_log(0, 0, 1 << 33), ValueError, "num_pages"),
]

C_ERRORS = [
    # (call, errno) - checked in C, with the kernel's errno
    (lambda vm: vm.write([1 << 30]), errno.EFAULT),
    (lambda vm: vm.collect(3), errno.ENOENT),
    (lambda vm: vm.collect(40000), errno.EINVAL),
    (lambda vm: vm.collect(0, 0, (1 << 12) + 1), errno.EINVAL),
    (lambda vm: vm.set_user_memory_region(1, 4096, 4096), errno.EEXIST),
    (lambda vm: vm.enable_manual_protect_flags(4), errno.EINVAL),
    # INITIALLY_SET without MANUAL_PROTECT_ENABLE: the kernel refuses it
    (lambda vm: vm.enable_manual_protect_flags(2), errno.EINVAL),
    (lambda vm: vm.enable_manual_protect_flags(6), errno.EINVAL),
    (lambda vm: vm.ring_usage(5), None),  # ENXIO (non-ring) or EINVAL (ring)
    (lambda vm: vm.harvest(9), None),
]


@pytest.mark.parametrize("case", range(len(PY_ERRORS)))
def test_python_argument_errors(vm, case):
    call, exc, text = PY_ERRORS[case]
    before = snapshot(vm)
    with pytest.raises(exc) as e:
        call(vm)
    assert text in str(e.value)
    assert snapshot(vm) == before


@pytest.mark.parametrize("case", range(len(C_ERRORS)))
def test_c_errors(vm, case):
    call, want = C_ERRORS[case]
    before = snapshot(vm)
    with pytest.raises(kd.KvmDirtyError) as e:
        call(vm)
    if want is None:
        want = errno.EINVAL if vm.backend == "ring" else errno.ENXIO
    assert e.value.errno == want, errno.errorcode[e.value.errno]
    assert snapshot(vm) == before
    # the dirty pages written before are all still there
    assert vm.collect(0).tolist() == [1, 2, 3]


def test_bad_constructor_arguments():
    for kw, exc in [({"backend": "nope"}, ValueError), ({"vcpus": 0}, ValueError),
                    ({"vcpus": 1000}, ValueError), ({"dirty_tracking": "x"}, ValueError),
                    ({"backend": "flat", "ring_entries": 4096}, ValueError)]:
        with pytest.raises(exc):
            kd.VM(**kw)


def test_closed_vm():
    vm = kd.VM()
    vm.close()
    vm.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        vm.write([1])
