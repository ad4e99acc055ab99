"""The hier backend through the library, beyond the shared semantic tests it
joins (equivalence, errno tables, races, counters, memslots, migrate): a
24 TiB guest in four 6 TiB slots runs here in bounded memory, slots of the
kernel's largest size are accepted, INITIALLY_SET and ranged collects agree
with a plain set model."""
import numpy as np
import pytest

import pykvmdirty as kd

LOG = kd.MEM_LOG_DIRTY_PAGES
TIB = 1 << 40
GIB = 1 << 30


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_24_tib_in_four_slots_bounded_memory():
    rng = np.random.default_rng(15)
    before = rss_bytes()
    vm = kd.VM("hier")
    slot_pages = (6 * TIB) >> 12
    for i in range(4):
        vm.set_user_memory_region(i, i * 6 * TIB, 6 * TIB, LOG)
    gfns = np.unique(rng.integers(0, 4 * slot_pages, 1000, dtype=np.uint64))
    for _ in range(3):  # the blocks are given back and taken again each round
        vm.write(gfns)
        got = np.concatenate([vm.collect(i) for i in range(4)])
        assert np.array_equal(got, gfns)
        assert all(vm.collect(i).size == 0 for i in range(4))
    grown = rss_bytes() - before
    assert grown < 64 << 20, "24 TiB with 1000 dirty pages grew RSS by %d MiB" % (grown >> 20)
    vm.close()


def test_largest_slot_and_errno_past_it():
    vm = kd.VM("hier")
    max_bytes = 0x7FFFFFFF << 12
    vm.set_user_memory_region(0, 0, max_bytes, LOG)
    last = 0x7FFFFFFF - 1
    vm.write([0, last])
    assert list(vm.collect(0)) == [0, last]
    with pytest.raises(kd.KvmDirtyError) as e:
        vm.set_user_memory_region(1, 16 * TIB, max_bytes + 4096, LOG)
    assert e.value.errno == 22  # EINVAL: over KVM_MEM_MAX_NR_PAGES
    vm.close()


@pytest.mark.parametrize("tracking", ["write_protect", "pml"])
def test_initially_set_get_clear(tracking):
    npages = 3 * 2048 + 77  # a partial group and a partial word at the end
    vm = kd.VM("hier", dirty_tracking=tracking)
    vm.enable_manual_protect(initially_set=True)
    vm.set_user_memory_region(0, 0, npages << 12, LOG)
    bm = vm.get_dirty_log(0)
    bits = np.unpackbits(bm.view(np.uint8), bitorder="little")
    assert bits[:npages].all() and not bits[npages:].any()
    mask = np.zeros_like(bm)
    mask[: (npages - 77) // 64] = ~np.uint64(0)
    vm.clear_dirty_log(0, 0, npages - 77, mask)
    assert np.array_equal(vm.collect(0), np.arange(npages - 77, npages, dtype=np.uint64))
    vm.write([5, 4000])
    assert list(vm.collect(0)) == [5, 4000]
    vm.close()


def test_ranged_collects_match_a_set_model():
    rng = np.random.default_rng(7)
    npages = 1 << 22  # 16 GiB: three levels
    vm = kd.VM("hier")
    vm.set_user_memory_region(0, 0, npages << 12, LOG)
    model = set()
    for _ in range(60):
        g = rng.integers(0, npages, int(rng.integers(1, 3000)), dtype=np.uint64)
        if rng.random() < 0.5:  # clustered
            g = (g % 40000).astype(np.uint64)
        vm.write(g)
        model.update(int(x) for x in g)
        a = int(rng.integers(0, npages))
        b = int(rng.integers(a, npages + 1))
        got = vm.collect(0, a, b - a)
        want = sorted(x for x in model if a <= x < b)
        assert list(got) == want
        model.difference_update(want)
    assert list(vm.collect(0)) == sorted(model)
    vm.close()


def test_stale_summaries_cleared_by_clean_collects():
    """Above level 0 a collect only reads; a summary bit over a subtree it
    finds empty is dropped then. After a scattered round, clean collects
    return to reading the root word alone within one collect per level, and
    a page dirtied meanwhile under a kept summary bit is still found."""
    npages = 6 * 1024 * 262144  # four levels
    pages = np.random.default_rng(1).choice(npages, 1000, replace=False).astype(np.uint64)
    with kd.VM("hier") as vm:
        vm.set_user_memory_region(0, 0, npages << 12, kd.MEM_LOG_DIRTY_PAGES)
        vm.write(pages)
        assert np.array_equal(vm.collect(0), np.sort(pages))
        vm.write(pages[:10])  # under summary bits the collect kept
        assert np.array_equal(vm.collect(0), np.sort(pages[:10]))
        scanned = []
        for _ in range(6):
            vm.reset_stats()
            assert vm.collect(0).size == 0
            scanned.append(vm.stats["summary_words_scanned"])
        assert scanned[0] > 1 and scanned[-2:] == [1, 1], scanned
