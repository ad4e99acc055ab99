"""The dirty-rate methods (QEMU's calc-dirty-rate) on the emulator against
known dirty sets, their bad inputs, the CLI, and QEMU's own calc-dirty-rate
on the firmware guest (skipped where QEMU is missing)."""
import asyncio
import math

import numpy as np
import pytest

from pykvmdirty import cli
from pykvmdirty._native import ffi, lib
from pykvmdirty.bindings.constants import MEM_LOG_DIRTY_PAGES
from pykvmdirty.bindings.page_sample import sample_page_crc32c
from pykvmdirty.bindings.vm import VM
from pykvmdirty.migration import dirtyrate as dr
from pykvmdirty.migration.workloads import WorkloadSpec
from pykvmdirty.qemu import dirtyrate as qd

MIB = 1 << 20
GIB = 1 << 30


def binomial_ok(dirty, n, p, k=4.0):
    """dirty samples of n within k sigma of B(n, p). With a fixed seed the draw
    is fixed, so the test cannot flake; k = 4 would fail a random seed with
    probability < 1e-4."""
    return abs(dirty - n * p) <= k * math.sqrt(n * p * (1 - p)) + 1e-9


# -- dirty bitmap: exact --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["flat", "twolevel", "hier", "bytemap"])
def test_bitmap_counts_the_distinct_pages_of_the_period(backend):
    with VM(backend) as vm:
        vm.set_user_memory_region(0, 0, 64 * MIB, MEM_LOG_DIRTY_PAGES)
        vm.write(np.arange(0, 5000, dtype=np.uint64))      # before the period: not counted
        bm = dr.DirtyBitmap(vm)
        bm.start()
        rng = np.random.default_rng(3)
        gfns = rng.integers(0, 16384, size=20000).astype(np.uint64)   # with repeats
        vm.write(gfns)
        est = bm.finish(2.0)
        truth = np.unique(gfns).size
        assert est.dirty_pages == truth
        assert est.pages_per_s == truth / 2.0
        assert est.mib_per_s == truth / 2.0 / 256
        assert est.detail["qemu_mb_per_s"] == ((truth * 4096) >> 20) * 1000 // 2000


# -- dirty ring: exact ----------------------------------------------------------------------

def test_ring_counts_each_page_once_per_epoch_across_vcpus():
    with VM("ring", vcpus=2, ring_entries=4096) as vm:
        vm.set_user_memory_region(0, 0, 64 * MIB, MEM_LOG_DIRTY_PAGES)
        vm.write([1, 2, 3])
        ring = dr.DirtyRing(vm)
        ring.start()
        vm.write(np.arange(100, 1100, dtype=np.uint64), vcpu=0)
        vm.write(np.arange(600, 2100, dtype=np.uint64), vcpu=1)   # 500 already dirty
        vm.write(np.arange(100, 200, dtype=np.uint64), vcpu=0)    # still dirty: no push
        est = ring.finish(1.0)
        assert est.detail["vcpu_entries"] == [1000, 1000]
        assert est.dirty_pages == 2000 == np.unique(np.r_[100:1100, 600:2100]).size
        # a reap re-protects: the next write of a page is counted again
        ring.start()
        vm.write(np.arange(100, 200, dtype=np.uint64))
        ring.reap()
        vm.write(np.arange(100, 200, dtype=np.uint64))
        assert ring.finish(1.0).dirty_pages == 200


def test_measure_exact_for_bitmap_and_ring_with_ring_full_reaps():
    spec = WorkloadSpec("hotspot", rate=40000, seed=7)
    wins = dr.measure(spec, 256 * MIB, [0.5, 1.0, 2.5], ["dirty-bitmap", "dirty-ring"],
                      vcpus=2, ring_entries=1024)
    for w in wins:
        assert w.writes == round(40000 * w.calc_time)
        assert w.estimates["dirty-bitmap"].dirty_pages == w.true_pages
        ring = w.estimates["dirty-ring"]
        assert ring.detail["reaps"] > 1                          # the ring filled
        assert ring.dirty_pages == w.ring_true_entries >= w.true_pages
    # a ring that never fills within one reaper interval counts the dirty set itself
    w = dr.measure(WorkloadSpec("uniform", rate=20000, seed=1), 256 * MIB, [0.5],
                   ["dirty-ring"], ring_entries=65536)[0]
    assert w.estimates["dirty-ring"].dirty_pages == w.true_pages


# -- page sampling: within the binomial's error ----------------------------------------------

def test_sample_hashes_are_crc32c_of_the_pages():
    with VM("flat", guest_memory=True) as vm:
        vm.set_user_memory_region(0, 0, 4 * MIB, 0)
        vm.write([5, 9], value=0x1234)
        mem = vm.slot_memory(0)
        h = sample_page_crc32c(vm, 0, [5, 9, 10])
        for i, page in enumerate([5, 9, 10]):
            buf = mem[page * 4096:(page + 1) * 4096]
            assert h[i] == lib.kd_crc32c(0, ffi.from_buffer(buf), 4096)
        assert h[0] == h[1] != h[2]
        with pytest.raises(ValueError, match="1024"):
            sample_page_crc32c(vm, 0, [1024])
        del mem, buf


def test_page_sampling_within_binomial_bound():
    npages = (256 * MIB) >> 12
    with VM("flat", guest_memory=True) as vm:
        vm.set_user_memory_region(0, 0, npages << 12, 0)
        ps = dr.PageSampling(vm, sample_pages=4096, seed=12345)
        assert ps.samples == 1024                 # 256 MiB x 4096 per GiB
        ps.start()
        dirty = np.random.default_rng(5).choice(npages, size=npages * 3 // 10,
                                                replace=False).astype(np.uint64)
        vm.write(dirty, value=1)
        est = ps.finish(1.0)
        # QEMU draws from [0, pages - 1): the last page is never sampled
        p = np.count_nonzero(dirty < npages - 1) / (npages - 1)
        n = est.detail["samples"]
        assert binomial_ok(est.detail["dirty_samples"], n, p)
        assert est.dirty_pages == est.detail["dirty_samples"] / n * npages
        assert abs(est.dirty_pages - dirty.size) <= 4 * est.detail["stderr_pages"] + npages / n
        qemu = est.detail["dirty_samples"] * 256 * 1000 // (n * 1000)
        assert est.detail["qemu_mb_per_s"] == qemu


def test_page_sampling_sees_content_not_writes():
    with VM("flat", guest_memory=True) as vm:
        vm.set_user_memory_region(0, 0, 128 * MIB, 0)
        ps = dr.PageSampling(vm, sample_pages=4096, seed=1)
        ps.start()
        vm.write(np.arange(32768, dtype=np.uint64), value=0)   # zero onto zero pages
        assert ps.finish(1.0).dirty_pages == 0
        ps.start()
        vm.write(np.arange(32768, dtype=np.uint64), value=2)   # every page changes
        est = ps.finish(1.0)
        assert est.detail["dirty_samples"] == est.detail["samples"] == 512
        assert est.dirty_pages == 32768


def test_measure_page_sampling_within_binomial_bound():
    wins = dr.measure(WorkloadSpec("uniform", rate=100000, seed=3), GIB, [0.5, 1, 2],
                      ["page-sampling", "dirty-bitmap"], sample_pages=512, sampling_seed=9)
    for w in wins:
        est = w.estimates["page-sampling"]
        n = est.detail["samples"]
        assert n == 512
        p = w.true_pages / (GIB >> 12)
        assert binomial_ok(est.detail["dirty_samples"], n, p)
        assert w.estimates["dirty-bitmap"].dirty_pages == w.true_pages


def test_replay_of_recorded_gfns():
    gfns = np.r_[np.arange(1000), np.arange(500)].astype(np.uint64)
    w = dr.replay(gfns, 64 * MIB, 1.0, ["dirty-bitmap", "dirty-ring"])
    assert w.true_pages == 1000 == w.estimates["dirty-bitmap"].dirty_pages
    assert w.estimates["dirty-ring"].dirty_pages == 1000


# -- bad inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 3601])
def test_bad_calc_time(bad):
    with pytest.raises(ValueError, match="calc_time"):
        dr.check_calc_time(bad)


def test_bad_calc_time_type_and_sample_pages():
    with pytest.raises(TypeError, match="calc_time"):
        dr.check_calc_time("1")
    for bad in (127, 4097, 0, -512):
        with pytest.raises(ValueError, match=r"sample_pages must be in \[128, 4096\].*%d" % bad):
            dr.check_sample_pages(bad)
    for bad in (1.5, True, "512"):
        with pytest.raises(TypeError, match="sample_pages"):
            dr.check_sample_pages(bad)


def test_methods_refuse_the_wrong_vm():
    with VM("ring") as vm:
        vm.set_user_memory_region(0, 0, 4 * MIB, MEM_LOG_DIRTY_PAGES)
        with pytest.raises(ValueError, match="bitmap"):
            dr.DirtyBitmap(vm)
    with VM("flat") as vm:
        vm.set_user_memory_region(0, 0, 4 * MIB, MEM_LOG_DIRTY_PAGES)
        with pytest.raises(ValueError, match="ring"):
            dr.DirtyRing(vm)
    with VM("flat", guest_memory=True) as vm:
        vm.set_user_memory_region(0, 0, 64 * 1024, 0)
        with pytest.raises(ValueError, match="large enough"):
            dr.PageSampling(vm)
        with pytest.raises(ValueError, match="100"):
            dr.PageSampling(vm, sample_pages=100)
    with pytest.raises(ValueError, match="unknown method 'x'"):
        dr.measure(WorkloadSpec("uniform", rate=10), 64 * MIB, [1], ["x"])
    with pytest.raises(ValueError, match="guest_size"):
        dr.measure(WorkloadSpec("uniform", rate=10), 1000, [1])


def test_qmp_args_checked_before_qemu_is_asked():
    assert qd.check_qmp_args("page-sampling", 1, 512) == ("page-sampling", 1, 512)
    with pytest.raises(ValueError, match="mode"):
        qd.check_qmp_args("bitmap", 1)
    with pytest.raises(ValueError, match="whole number.*0.5"):
        qd.check_qmp_args("dirty-bitmap", 0.5)
    with pytest.raises(ValueError, match=r"\[1, 60\].*61"):
        qd.check_qmp_args("dirty-ring", 61)
    with pytest.raises(ValueError, match="page-sampling only"):
        qd.check_qmp_args("dirty-bitmap", 1, 512)
    with pytest.raises(ValueError, match="4097"):
        qd.check_qmp_args("page-sampling", 1, 4097)

    class NeverAsked:
        async def cmd(self, *a, **k):
            raise AssertionError("QEMU asked")
    with pytest.raises(ValueError, match="5000"):
        asyncio.run(qd.calc_dirty_rate(NeverAsked(), "page-sampling", 1, 5000))


@pytest.mark.parametrize("argv, words", [
    (["--calc-time", "0"], "--calc-time must be > 0"),
    (["--calc-time", "1,x"], "--calc-time takes seconds"),
    (["--sample-pages", "100"], "--sample-pages must be in [128, 4096] pages per GiB"),
    (["--methods", "dirty-log"], "unknown method 'dirty-log'"),
    (["--ring-entries", "100"], "--ring-entries must be a power of two"),
    (["--qemu", "--calc-time", "0.5"], "whole number of seconds"),
    (["--qemu", "--workload", "zipf"], "uniform or hotspot"),
    (["--guest-size", "100GiB"], "--guest-size must be at most 64GiB"),
])
def test_cli_bad_input_is_one_line(argv, words, capsys):
    assert cli.main(["dirtyrate"] + argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_emulator_table(capsys, tmp_path):
    out = tmp_path / "dr.json"
    assert cli.main(["dirtyrate", "--rate", "20000", "--calc-time", "0.5,1",
                     "--guest-size", "256MiB", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "true pages" in text and "dirty-bitmap" in text and "+0.0%" in text
    import json
    data = json.loads(out.read_text())
    assert [w["calc_time"] for w in data["windows"]] == [0.5, 1.0]
    for w in data["windows"]:
        assert w["estimates"]["dirty-bitmap"]["error"] == 0


# -- QEMU's own calc-dirty-rate (a few seconds) ----------------------------------------------

def _qemu_or_skip():
    from pykvmdirty.qemu.errors import QemuNotFound
    from pykvmdirty.qemu.process import _qmp_client_class, qemu_binary
    try:
        qemu_binary()
        _qmp_client_class()
    except QemuNotFound as e:
        pytest.skip(str(e))
    from pykvmdirty.qemu.firmware import FirmwareBuildError, image_path
    try:
        image_path()
    except FirmwareBuildError as e:
        pytest.skip("the firmware guest cannot be built here: %s" % e)


def test_qemu_calc_dirty_rate_on_firmware_guest():
    _qemu_or_skip()
    from pykvmdirty.qemu.config import QemuConfig
    cfg = QemuConfig(workload="uniform", rate=20000, start=1 * MIB, end=256 * MIB,
                     guest_size=256 * MIB, seed=2)
    m = qd.measure_firmware_guest(cfg, ["page-sampling", "dirty-bitmap"], [1], 512)
    modes = [w["mode"] for w in m["windows"]]
    if "dirty-bitmap" in m["skipped"]:      # QEMU 7.2 under TCG: SIGSEGV in that mode
        assert m["accel"] == "tcg" and "exited" in m["skipped"]["dirty-bitmap"]
        assert modes == ["page-sampling"]
    else:
        assert modes == ["page-sampling", "dirty-bitmap"]
    for w in m["windows"]:
        assert w["status"] == "measured" and w["calc_time"] == 1
        assert w["dirty_rate_mib_s"] >= 0 and w["pages_after"] > w["pages_before"]
    assert m["windows"][0]["sample_pages"] == 512
    rows = qd.side_by_side(cfg, m, 512)
    assert [r["mode"] for r in rows] == modes
    assert all(r["true_mib_s"] > 0 for r in rows)
