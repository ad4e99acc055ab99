"""Kernel cost counters: exact event counts for known sequences."""
import numpy as np
import pytest

import pykvmdirty as kd
from conftest import LOG

NPAGES = 1 << 18  # 1 GiB


def vm_with_slot(backend="flat", **kw):
    vm = kd.VM(backend, **kw)
    vm.set_user_memory_region(0, 0, NPAGES << 12, LOG)
    return vm


@pytest.mark.parametrize("backend", ["flat", "twolevel", "bytemap", "ring", "hier"])
def test_one_fault_per_page_per_protection_epoch(backend):
    vm = vm_with_slot(backend)
    s0 = vm.stats
    assert s0["pages_reprotected"] == NPAGES  # enabling the log protects every page
    vm.reset_stats()
    vm.write([1, 2, 3, 1, 2, 3, 3])
    st = vm.stats
    assert st["writes"] == 7 and st["write_faults"] == 3
    vm.collect(0)
    st = vm.stats
    assert st["pages_reprotected"] == 3 and st["tlb_flushes"] == 1
    vm.write([1, 1, 1, 9])
    assert vm.stats["write_faults"] == 5
    vm.collect(0)
    vm.collect(0)  # nothing to protect: no flush
    st = vm.stats
    assert st["pages_reprotected"] == 5 and st["tlb_flushes"] == 2
    if backend == "ring":
        assert st["ring_pushes"] == st["ring_harvested"] == st["ring_reset"] == 5


def test_pml_counts_entries_not_faults():
    vm = vm_with_slot("flat", dirty_tracking="pml")
    vm.reset_stats()
    vm.write(np.arange(1000, dtype=np.uint64))
    st = vm.stats
    assert st["write_faults"] == 0 and st["pml_entries"] == 1000
    assert st["pml_flushes"] == 1  # one full-buffer exit at 512; 488 still buffered
    assert vm.collect(0).size == 1000  # the collect kicks the vCPU
    st = vm.stats
    assert st["pml_flushes"] == 2 and st["pages_reprotected"] == 1000


def test_o1_protect_counts_bumps():
    vm = vm_with_slot("flat", o1_protect=True)
    st = vm.stats
    assert st["protect_bumps"] == 1 and st["pages_reprotected"] == 0  # enable
    vm.write(np.arange(100, dtype=np.uint64))
    bm = vm.get_dirty_log(0)
    assert int(np.unpackbits(bm.view(np.uint8)).sum()) == 100
    st = vm.stats
    assert st["protect_bumps"] == 2 and st["pages_reprotected"] == 0
    vm.write(np.arange(100, dtype=np.uint64))  # all protected again
    assert vm.stats["write_faults"] == 200


def test_scan_counters():
    flat = vm_with_slot("flat")
    two = vm_with_slot("twolevel")
    for vm in (flat, two):
        vm.write([5, 100000])
        vm.reset_stats()
        vm.collect(0)
    assert flat.stats["words_scanned"] == NPAGES // 64
    st = two.stats
    assert st["summary_words_scanned"] == NPAGES // 512 // 64
    assert st["words_scanned"] == 2 * 8  # two dirty chunks, 8 leaf words each
    bm = vm_with_slot("bytemap")
    bm.write([5])
    bm.reset_stats()
    bm.collect(0)
    st = bm.stats
    assert st["bytemap_bytes_scanned"] == NPAGES and st["get_calls"] == 1
    hier = vm_with_slot("hier")
    hier.write([5, 100000])
    hier.reset_stats()
    hier.collect(0)
    st = hier.stats
    # one word per level on the two paths (levels of 64 words' worth of
    # chunks each; NPAGES // 512 chunks), and the two dirty chunks' leaves
    levels, n = 0, -(-NPAGES // 512)
    while True:
        n, levels = -(-n // 64), levels + 1
        if n == 1:
            break
    assert st["summary_words_scanned"] == 1 + 2 * (levels - 1)
    assert st["words_scanned"] == 2 * 8


def test_untracked_writes():
    vm = kd.VM("flat")
    vm.set_user_memory_region(0, 0, 1 << 20, 0)
    vm.write([1, 2])
    st = vm.stats
    assert st["writes"] == 2 and st["untracked_writes"] == 2 and st["write_faults"] == 0
