"""CostModel: defaults, pricing arithmetic, JSON calibration files, bad values."""
import json

import pytest

import pykvmdirty as kd
from pykvmdirty import costmodel
from pykvmdirty.costmodel import GIB_WORDS, WRITE_SIDE, CostModel


def test_defaults_come_from_the_shipped_data_file_with_sources():
    with open(costmodel.DATA_FILE) as f:
        data = json.load(f)
    assert data["format"] == "pykvmdirty-cost-model" and data["version"] == 1
    assert set(data["fields"]) == set(CostModel.field_names())
    m = CostModel()
    for name, entry in data["fields"].items():
        assert getattr(m, name) == entry["value"], name
        src = entry["source"]
        # every default says where it comes from, in terms a user can follow
        assert (src.startswith("assumed") or "measured by `pykvmdirty calibrate" in src
                or "of `pykvmdirty calibrate`" in src or "http" in src), (name, src)
        assert "/work/" not in src and "FACTS" not in src
    assert CostModel.load(costmodel.DATA_FILE) == m
    # 512 GiB classic GET with nothing dirty: words * word_ns + one call
    assert m.kernel_get_ns(512 << 18, 0) == pytest.approx(
        512 * GIB_WORDS * m.word_ns + m.ioctl_ns)


def test_costmodel_source_cites_nothing_outside_the_package():
    with open(costmodel.__file__) as f:
        text = f.read()
    assert "/work/" not in text and "FACTS" not in text


def test_file_format_round_trip_keeps_sources(tmp_path):
    m = CostModel(word_ns=2.5)
    p = tmp_path / "m.json"
    m.save(p, sources={"word_ns": "measured by hand"})
    data = json.loads(p.read_text())
    assert data["fields"]["word_ns"] == {"value": 2.5, "event": costmodel.EVENTS["word_ns"],
                                         "source": "measured by hand"}
    assert data["fields"]["ioctl_ns"]["source"] == costmodel.DEFAULT_SOURCES["ioctl_ns"]
    assert CostModel.load(p) == m


def test_migrate_and_compare_read_the_same_file(tmp_path):
    """One model: a cost-model file drives migrate's virtual clock."""
    p = tmp_path / "m.json"
    CostModel(page_ns=5000.0).save(p)
    slow = kd.migrate(guest_size="8MiB", slots=1, populate=0.5, cost_model=str(p),
                      max_passes=2, link_bandwidth=0, bandwidth=0)
    fast = kd.migrate(guest_size="8MiB", slots=1, populate=0.5, max_passes=2,
                      link_bandwidth=0, bandwidth=0)
    assert slow.config["cost_model"]["page_ns"] == 5000.0
    # the bulk pass reads every page: its virtual duration follows page_ns
    assert slow.passes[0].duration_ns > fast.passes[0].duration_ns


def test_modelled_ns_is_sum_of_counts_times_prices():
    m = CostModel(**{f: 0.0 for f in CostModel.field_names()})
    m = CostModel.from_dict(dict(m.to_dict(), write_fault_ns=3.0, reprotect_ns=5.0,
                                 word_ns=7.0, tlb_flush_ns=11.0, ioctl_ns=13.0,
                                 ring_harvest_ns=17.0, ring_reset_ns=19.0))
    st = {"write_faults": 2, "pages_reprotected": 3, "words_scanned": 4, "tlb_flushes": 1,
          "get_calls": 1, "clear_calls": 1, "ring_harvested": 1, "ring_reset": 2}
    assert m.modelled_ns(st) == 2 * 3 + 3 * 5 + 4 * 7 + 11 + 2 * 13 + 17 + 2 * 19
    # collect side leaves the write faults out
    assert m.collect_side_ns(st) == m.modelled_ns(st) - 2 * 3
    # a ring's words are a user-side staging bitmap, not kernel GET words
    assert m.modelled_ns(st, backend="ring") == m.modelled_ns(st) - 4 * 7
    assert "write_faults" in WRITE_SIDE


def test_uffd_prices_and_user_side():
    m = CostModel()
    st = {"write_faults": 10, "pages_reprotected": 10, "bytemap_bytes_scanned": 1000}
    assert m.modelled_ns(st, backend="uffd") == pytest.approx(
        10 * m.uffd_fault_ns + 10 * m.uffd_reprotect_ns)
    assert m.modelled_ns(st, include_user=True) == pytest.approx(
        m.modelled_ns(st) + 1000 * m.bytemap_byte_ns)


def test_prices_real_vm_stats():
    with kd.VM("flat") as vm:
        vm.set_user_memory_region(0, 0, 1 << 24, kd.MEM_LOG_DIRTY_PAGES)
        vm.reset_stats()
        vm.write([1, 2, 300])
        vm.collect(0)
        st = vm.stats
    m = CostModel()
    b = m.breakdown(st)
    assert b["write_faults"] == 3 * m.write_fault_ns
    assert b["pages_reprotected"] == 3 * m.reprotect_ns
    assert b["words_scanned"] == st["words_scanned"] * m.word_ns > 0
    assert m.modelled_ns(st) == pytest.approx(sum(b.values()))


def test_json_round_trip_and_partial_override(tmp_path):
    m = CostModel(word_ns=1.5, write_fault_ns=900)
    p = tmp_path / "cal.json"
    m.save(p)
    assert CostModel.load(p) == m
    p.write_text(json.dumps({"reprotect_ns": 42}))
    loaded = CostModel.load(p)
    assert loaded.reprotect_ns == 42
    assert loaded.word_ns == CostModel().word_ns


@pytest.mark.parametrize("data, words", [
    ({"bogus_ns": 1}, "bogus_ns"),
    ({"word_ns": -1}, "word_ns"),
    ({"word_ns": "fast"}, "word_ns"),
    ({"word_ns": float("nan")}, "word_ns"),
    ([1, 2], "JSON object"),
])
def test_bad_calibration_names_the_value(tmp_path, data, words):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=words):
        CostModel.load(p)


def test_bad_json_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CostModel.load(p)


def test_migrate_cli_reads_a_cost_model_file(tmp_path, capsys):
    from pykvmdirty.cli import main
    p = tmp_path / "m.json"
    CostModel(page_ns=777.0).save(p)
    out = tmp_path / "r.json"
    rc = main(["migrate", "--guest-size", "8MiB", "--slots", "1", "--max-passes", "2",
               "--quiet", "--cost-model", str(p), "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["config"]["cost_model"]["page_ns"] == 777.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"warp_ns": 1}')
    rc = main(["migrate", "--guest-size", "8MiB", "--quiet", "--cost-model", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "warp_ns" in err and str(bad) in err
