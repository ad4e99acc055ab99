"""Nothing done from Python may crash the interpreter (issue 12, item 2):
thread pools and numpy views of C memory outlive, or are refused around, the
operations that would free what they use. Each case runs in a subprocess so
a crash (or a sanitizer abort under the ASan build) fails one test instead
of killing pytest; the script prints OK at its end."""
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import gc, sys
import numpy as np
import pykvmdirty as kd
from pykvmdirty.errors import KvmDirtyError
MiB = 1 << 20
def busy_vm(nvcpus=2):
    vm = kd.VM("flat", vcpus=nvcpus)
    for s in range(nvcpus):
        vm.set_user_memory_region(s, s * 64 * MiB, 64 * MiB, kd.MEM_LOG_DIRTY_PAGES)
    lists = [np.arange(s * 16384, s * 16384 + 16384, dtype=np.uint64) for s in range(nvcpus)]
    return vm, lists
"""


def run_case(body, timeout=60):
    code = PRELUDE + textwrap.dedent(body) + "\nprint('OK')\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, cwd="/")
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), (
        "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout[-2000:], p.stderr[-4000:]))
    return p


def test_writers_dropped_without_join_are_stopped_and_joined():
    run_case("""
        vm, lists = busy_vm()
        w = kd.Writers(vm, lists, loops=10**9)
        del w
        gc.collect()
        # the finalizer stopped and joined the threads: the VM is idle again
        vm.set_user_memory_region(0, 0, 0)
        vm.close()
    """)


def test_writers_running_at_exit_are_joined():
    run_case("""
        vm, lists = busy_vm()
        w = kd.Writers(vm, lists, loops=10**9)
    """)


def test_close_while_writers_run_stops_and_joins_them():
    run_case("""
        vm, lists = busy_vm()
        w = kd.Writers(vm, lists, loops=10**9)
        vm.close()
        assert not w.running
        try:
            w.join()
        except ValueError as e:
            assert "already joined" in str(e)
        else:
            raise AssertionError("join after close did not say the writers were joined")
    """)


def test_vm_dropped_while_writers_run():
    run_case("""
        vm, lists = busy_vm()
        w = kd.Writers(vm, lists, loops=10**9)
        del vm   # the Writers keep the VM (and its C memory) alive
        gc.collect()
        w.stop()
        assert w.join().shape == (2,)
        del w
        gc.collect()
    """)


@pytest.mark.parametrize("op", ["delete", "recreate", "create"])
def test_slot_changes_while_writers_run_are_refused(op):
    run_case("""
        import errno
        vm, lists = busy_vm()
        w = kd.Writers(vm, lists, loops=10**9)
        op = %r
        try:
            if op == "delete":
                vm.set_user_memory_region(0, 0, 0)
            elif op == "recreate":
                vm.set_user_memory_region(1, 64 * MiB, 0)
                vm.set_user_memory_region(1, 64 * MiB, 128 * MiB)
            else:
                vm.set_user_memory_region(5, 1 << 40, MiB)
        except KvmDirtyError as e:
            assert e.errno == errno.EBUSY and "writer threads are running" in str(e), e
        else:
            raise AssertionError("slot change while writers run was accepted")
        w.stop()
        w.join()
        vm.set_user_memory_region(0, 0, 0)  # idle again: allowed
    """ % op)


def test_ring_view_outlives_close():
    run_case("""
        vm = kd.VM("ring", ring_entries=256)
        vm.set_user_memory_region(0, 0, MiB, kd.MEM_LOG_DIRTY_PAGES)
        vm.write([3, 4, 5])
        r = vm.ring(0)
        vm.close()
        del vm
        gc.collect()
        assert r[:3]["offset"].tolist() == [3, 4, 5]
        view = r[1:]
        del r
        gc.collect()
        assert view["offset"][0] == 4
    """)


def test_slot_memory_view_blocks_slot_deletion():
    run_case("""
        import errno
        vm = kd.VM("flat", guest_memory=True)
        vm.set_user_memory_region(0, 0, MiB, kd.MEM_LOG_DIRTY_PAGES)
        m = vm.slot_memory(0)[4096:]
        m[:8] = 7
        try:
            vm.set_user_memory_region(0, 0, 0)
        except KvmDirtyError as e:
            assert e.errno == errno.EBUSY and "view" in str(e), e
        else:
            raise AssertionError("slot deleted under a live view")
        assert m[:8].tolist() == [7] * 8
        del m
        gc.collect()
        vm.set_user_memory_region(0, 0, 0)
        vm.close()
    """)


def test_slot_memory_view_outlives_close():
    run_case("""
        vm = kd.VM("flat", guest_memory=True)
        vm.set_user_memory_region(0, 0, MiB, kd.MEM_LOG_DIRTY_PAGES)
        vm.write([1], value=0x1122334455667788)
        m = vm.slot_memory(0)
        vm.close()
        del vm
        gc.collect()
        assert int(m[4096:4104].view(np.uint64)[0]) == 0x1122334455667788
    """)


def test_destination_view_outlives_its_owner():
    run_case("""
        r = kd.migrate(guest_size="4MiB", slots=1, populate=1.0, max_passes=2)
        assert r.verified
        from pykvmdirty.migration.sinks import LocalSink
        sink = LocalSink()
        kd.migrate(guest_size="4MiB", slots=1, populate=1.0, max_passes=2, sink=sink)
        mem = sink.dest.memory(0)
        del sink
        gc.collect()
        assert mem.size == 4 * MiB and mem.view(np.uint64)[::512].any()
    """)
