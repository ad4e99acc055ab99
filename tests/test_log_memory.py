"""kd_log_memory / VM.log_memory: what a slot's dirty log holds in this
process, reserved and resident (mincore). The lazily backed hier log commits
what gets dirty; the bitmap logs commit their bitmaps up front."""
import errno

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty import limits
from pykvmdirty.errors import KvmDirtyError

GIB = 1 << 30
GIB_PAGES = GIB >> 12
LOG = kd.MEM_LOG_DIRTY_PAGES
EMULATED = ["flat", "twolevel", "bytemap", "ring", "hier"]


def _scattered(npages, n, seed=15):
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(0, npages, n, dtype=np.uint64))


@pytest.mark.parametrize("backend", EMULATED)
def test_every_emulated_log_reports_its_memory(backend):
    with kd.VM(backend) as vm:
        vm.set_user_memory_region(0, 0, GIB, LOG)
        vm.write(_scattered(GIB_PAGES, 1000))
        mem = vm.log_memory(0)
        assert isinstance(mem, kd.LogMemory)
        assert 0 < mem.resident <= mem.reserved
        assert mem.reserved % 4096 == 0 and mem.resident % 4096 == 0


def test_flat_bitmap_is_committed_up_front():
    with kd.VM("flat") as vm:
        vm.set_user_memory_region(0, 0, GIB, LOG)
        assert vm.log_memory(0) == kd.LogMemory(GIB_PAGES // 8, GIB_PAGES // 8)


def test_bytemap_counts_the_map_and_the_bitmaps():
    with kd.VM("bytemap") as vm:
        vm.set_user_memory_region(0, 0, GIB, LOG)
        mem = vm.log_memory(0)
        assert mem.reserved >= GIB_PAGES + GIB_PAGES // 8


def test_hier_commits_what_gets_dirty_at_24_tib():
    """Four 6 TiB slots, 1000 scattered pages: reserved is the full log's
    address space, resident a few MiB (issue 15: at most 64 MiB)."""
    slot = 6 << 40
    with kd.VM("hier") as vm:
        for i in range(4):
            vm.set_user_memory_region(i, i * slot, slot, LOG)
        before = sum(vm.log_memory(i).resident for i in range(4))
        vm.write(_scattered(4 * (slot >> 12), 1000))
        after = [vm.log_memory(i) for i in range(4)]
        resident = sum(m.resident for m in after)
        reserved = sum(m.reserved for m in after)
        assert before < resident <= 64 << 20
        flat_bitmap = (4 * slot >> 12) // 8  # 768 MiB
        assert reserved >= flat_bitmap and 50 * resident < flat_bitmap


def test_hier_full_population_is_within_2_percent_of_flat():
    """INITIALLY_SET: every page dirty, every block taken, at 64 GiB."""
    resident = {}
    for backend in ("flat", "hier"):
        with kd.VM(backend) as vm:
            vm.enable_manual_protect(initially_set=True)
            vm.set_user_memory_region(0, 0, 64 * GIB, LOG)
            resident[backend] = vm.log_memory(0).resident
    assert resident["flat"] == 64 * GIB_PAGES // 8
    assert resident["flat"] < resident["hier"] <= 1.02 * resident["flat"]


def test_bad_slots_are_refused():
    with kd.VM("hier") as vm:
        vm.set_user_memory_region(0, 0, GIB, LOG)
        vm.set_user_memory_region(1, GIB, GIB, 0)  # no dirty log
        for slot in (1, 7):
            with pytest.raises(KvmDirtyError) as e:
                vm.log_memory(slot)
            assert e.value.errno == errno.ENOENT and "log_memory(slot=%#x)" % slot in str(e.value)
        with pytest.raises(ValueError, match="slot"):
            vm.log_memory(-1)
        with pytest.raises(KvmDirtyError) as e:
            vm.log_memory(0x7fff)  # as_id 0, id past KD_USER_MEM_SLOTS
        assert e.value.errno == errno.EINVAL
    with pytest.raises(Exception, match="closed"):
        vm.log_memory(0)


def test_kvm_counts_only_what_user_space_holds():
    ok, why = kd.backend_available("kvm")
    if not ok:
        pytest.skip("kvm backend unavailable here: %s" % why)
    with kd.VM("kvm") as vm:
        vm.set_user_memory_region(0, 0, GIB, LOG)
        mem = vm.log_memory(0)
        # user side: the GET scratch bitmap and the pending map (the kernel's
        # bitmaps are not counted)
        assert GIB_PAGES // 8 <= mem.reserved <= 3 * (GIB_PAGES // 8)


# ---------------------------------------------------------------------------
# limits.slot_log, the one model of log memory (every estimate uses it),
# against what C reports for a slot it made

TRACKINGS = {"kvm": ["write_protect"], "uffd": ["write_protect", "uffd_sync", "mprotect"]}
SIZES = [1, 63, 64, 65, 4097, 1 << 18, (1 << 18) + 31, (1 << 21) + 7, 3 << 20]


def _available(backend):
    ok, why = kd.backend_available(backend)
    if not ok:
        pytest.skip("%s backend unavailable here: %s" % (backend, why))


@pytest.mark.parametrize("backend", EMULATED + ["kvm", "uffd"])
def test_the_log_memory_model_is_what_c_allocates(backend):
    """Reserved and resident, right after the log is enabled, for every
    tracking mode, INITIALLY_SET where the backend has it, and slot sizes
    that are and are not multiples of 64 pages (or of a chunk, a group)."""
    if backend in ("kvm", "uffd"):
        _available(backend)
    initially = [False] if backend in ("ring", "uffd") else [False, True]
    for tracking in TRACKINGS.get(backend, ["write_protect", "pml"]):
        for init in initially:
            with kd.VM(backend, dirty_tracking=tracking) as vm:
                if init:
                    vm.enable_manual_protect(initially_set=True)
                for i, npages in enumerate(SIZES):
                    vm.set_user_memory_region(i, sum(SIZES[:i]) << 12, npages << 12, LOG)
                for i, npages in enumerate(SIZES):
                    model = limits.slot_log(backend, npages, tracking, init)
                    what = (backend, tracking, init, npages)
                    assert vm.log_memory(i) == kd.LogMemory(model.reserved, model.resident), what
                    assert model.kernel == (2 * -(-npages // 32768) * 4096
                                            if backend == "kvm" else 0), what


@pytest.mark.parametrize("backend,vcpus,entries", [
    ("ring", 1, 1024), ("ring", 3, 4096), ("ring", 2, 65536), ("kvm", 2, 4096), ("kvm", 1, 512)])
def test_the_ring_memory_model_is_the_rings_c_makes(backend, vcpus, entries):
    if backend == "kvm":
        _available(backend)
    with kd.VM(backend, vcpus=vcpus, ring_entries=entries) as vm:
        vm.set_user_memory_region(0, 0, 65 << 12, LOG)
        rings = sum(-(-vm.ring(v).nbytes // 4096) * 4096 for v in range(vcpus))
        assert limits.ring_memory(backend, vcpus, entries) == rings
        mem = vm.log_memory(0)
        log = limits.slot_log(backend, 65)
        assert (mem.reserved, mem.resident) == (log.reserved, log.resident)
        # the estimates' figure: the slots' logs, the kernel's, the rings
        assert limits.log_memory(backend, [65], vcpus, entries) == \
            log.reserved + log.kernel + rings


def test_log_memory_without_rings():
    assert limits.ring_memory("flat", 4, 4096) == 0
    assert limits.ring_memory("kvm", 4, 0) == 0
    assert limits.log_memory("flat", [64, 65]) == 2 * 4096
