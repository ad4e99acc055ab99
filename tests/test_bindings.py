"""The bindings layer: it alone touches the cffi extension, checks every C
return code and raises typed errors; defects of issue 11 stay fixed."""
import ast
import errno
import pathlib

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty.errors import KvmDirtyError, RingFullError
from pykvmdirty.migration.config import MigrationConfig
from pykvmdirty.migration import strategies
from pykvmdirty.migration.workloads import VirtualWorkload, WorkloadSpec

PKG = pathlib.Path(kd.__file__).parent
SOURCES = [p for p in PKG.rglob("*.py") if p.name != "_build.py"]


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield node, "", [a.name for a in node.names]


def test_only_bindings_touch_the_extension():
    offenders = []
    for p in SOURCES:
        rel = p.relative_to(PKG)
        if rel.parts[0] == "bindings":
            continue
        for node, module, names in _imports(p):
            if "_native" in module or any("_native" in n for n in names):
                offenders.append("%s:%d" % (rel, node.lineno))
    assert not offenders, "ffi/lib used outside pykvmdirty/bindings: %s" % offenders


def test_no_private_name_imported_across_modules():
    offenders = []
    for p in SOURCES:
        for node, module, names in _imports(p):
            if isinstance(node, ast.ImportFrom) and node.level and module != "_native":
                offenders += ["%s:%d %s" % (p.relative_to(PKG), node.lineno, n)
                              for n in names if n.startswith("_") and not n.startswith("__")]
    assert not offenders


def test_no_module_shadows_the_migrate_function():
    assert not (PKG / "migrate.py").exists()
    assert callable(kd.migrate)
    import pykvmdirty.migration as mig
    assert mig.migrate is kd.migrate


def test_collect_after_close_says_closed():
    vm = kd.VM("flat")
    vm.set_user_memory_region(0, 0, 1 << 20)
    vm.close()
    for call in (lambda: vm.collect(0), lambda: vm.write([1]), lambda: vm.get_dirty_log(0)):
        with pytest.raises(ValueError, match="VM is closed"):
            call()


def test_entries_of_a_deleted_slot_raise_instead_of_base_zero():
    with kd.VM("ring", ring_entries=256) as vm:
        vm.set_user_memory_region(1, 1 << 30, 1 << 20, kd.MEM_LOG_DIRTY_PAGES)
        vm.write([(1 << 18) + 5])
        entries = vm.harvest(0)
        assert vm.entries_to_gfns(entries).tolist() == [(1 << 18) + 5]
        vm.reset_dirty_rings()
        vm.set_user_memory_region(1, 1 << 30, 0)
        with pytest.raises(KvmDirtyError, match="slot 0x1"):
            vm.entries_to_gfns(entries)


def test_ring_full_without_a_reaper_raises_ring_full_error():
    with kd.VM("ring", ring_entries=256) as vm:
        vm.set_user_memory_region(0, 0, 16 << 20, kd.MEM_LOG_DIRTY_PAGES)
        wl = VirtualWorkload(vm, WorkloadSpec("sequential", 1000), 0, 4096)
        with pytest.raises(RingFullError) as info:
            wl.write_gfns(0, np.arange(1000, dtype=np.uint64), 1, 0)
        assert info.value.errno == errno.ENOBUFS and info.value.vcpu == 0
        assert 0 < info.value.applied < 1000


def test_tiny_batches_carry_the_control_records():
    """MEM_SIZE of many slots and EOS in the smallest batch buffer: a FULL
    result is flushed and the record retried, never dropped."""
    r = kd.migrate(guest_size="8MiB", slots=64, batch_bytes=4200, populate=0.1, max_passes=2)
    assert r.verified is True


def test_config_errors_name_field_and_value():
    with pytest.raises(ValueError, match="vcpus must be <= 256, got 300"):
        MigrationConfig(vcpus=300)
    with pytest.raises(ValueError, match="unknown dirty_tracking 'x'"):
        MigrationConfig(dirty_tracking="x")
    with pytest.raises(TypeError, match="step must be a number, got 'a'"):
        MigrationConfig(step="a")
    cfg = MigrationConfig(guest_size="8MiB", slots=2)
    assert cfg.guest_size == 8 << 20 and cfg.npages == 2048
    assert kd.migrate(cfg, max_passes=2).config["slots"] == 2


def test_one_class_per_sync_strategy():
    assert set(strategies.STRATEGY_CLASSES) == {"global", "per-slot", "chunked-clear", "ring"}
    assert len(set(strategies.STRATEGY_CLASSES.values())) == 4
    assert strategies.ChunkedClearSync.manual_protect
    assert strategies.RingSync.uses_ring and strategies.PerSlotSync.collects_per_slot
