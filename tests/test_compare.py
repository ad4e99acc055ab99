"""pykvmdirty compare: every cell present, correct pages found, ratios, the
JSON/PNG outputs, the many-slot layout, and clear errors for bad options.
Tiny guests (16-32 MiB) so the whole file runs in seconds; no timing asserts."""
import json

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty import limits
from pykvmdirty.analysis import compare as cmp
from pykvmdirty.cli import main
from pykvmdirty.costmodel import CostModel

SIZES = [0.015625, 0.03125]  # 16 and 32 MiB
DIRTY = [0, 100]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def available(b):
    return b in cmp.BASELINES or kd.backend_available(b)[0]


def run_cli(capsys, *argv):
    rc = main(["compare", "--no-progress", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_has_every_cell(tmp_path, capsys):
    js = tmp_path / "out.json"
    rc, out, _ = run_cli(capsys, "--sizes", ",".join(map(str, SIZES)), "--dirty", "0,100",
                         "--repeats", "2", "--json", str(js))
    assert rc == 0
    result = json.loads(js.read_text())
    cells = result["cells"]
    want = {(s, d, b) for s in SIZES for d in DIRTY for b in cmp.ALL_BACKENDS}
    got = {(c["size_gib"], c["dirty"], c["backend"]) for c in cells}
    assert got == want and len(cells) == len(want)
    for c in cells:
        if not available(c["backend"]):
            assert c["status"] == "skipped" and c["reason"]
            continue
        if c["backend"] == "uffd" and c["status"] == "error":
            continue  # real memory may be refused; the reason is reported
        assert c["status"] == "ok", c
        assert c["found"] == c["dirty"]
        assert c["collect_ns"] > 0 and c["collect_ns_min"] <= c["collect_ns"]
        assert c["log_bytes"] > 0
        assert c["ratio_kvm"] is not None
        if c["backend"] == "flat":
            assert c["ratio_flat"] == 1.0
        if c["backend"] not in cmp.BASELINES:
            assert c["modelled_ns"] >= c["modelled_collect_ns"] > 0 or c["dirty"] == 0
            assert set(c["stats"]) >= {"write_faults", "pages_collected"}
    # the table names every backend that ran
    for b in cmp.ALL_BACKENDS:
        assert b in out


def test_cells_find_exactly_the_written_pages():
    for b in ("flat", "twolevel", "bytemap", "ring", "flatnonzero", "read"):
        c = cmp.run_cell(0.015625, 300, b, repeats=2, seed=3)
        assert c["status"] == "ok" and c["found"] == 300, c
    # counters of the pass: one fault and one re-protection per dirty page
    c = cmp.run_cell(0.015625, 300, "flat", repeats=2)
    assert c["stats"]["write_faults"] == 300
    assert c["stats"]["pages_reprotected"] == 300
    assert c["stats"]["pages_collected"] == 300


def test_dirty_pages_are_distinct_sorted_and_seeded():
    a = cmp.dirty_pages(1 << 20, 5000, seed=1)
    assert a.dtype == np.uint64 and np.all(np.diff(a) > 0) and a[-1] < (1 << 20)
    assert np.array_equal(a, cmp.dirty_pages(1 << 20, 5000, seed=1))
    assert not np.array_equal(a, cmp.dirty_pages(1 << 20, 5000, seed=2))
    bm = cmp.pages_to_bitmap(a, 1 << 20)
    assert int(np.unpackbits(bm.view(np.uint8)).sum()) == 5000
    assert np.array_equal(cmp.flatnonzero_gfns(bm), a)


def test_ring_spreads_over_vcpus_when_dirty_exceeds_one_ring():
    n = cmp.RING_ENTRIES  # more than one ring's soft limit
    c = cmp.run_cell(0.25, n, "ring", repeats=1)
    assert c["status"] == "ok" and c["found"] == n
    assert c["vcpus"] == 2
    # the two vCPUs' rings and the slot's protection bitmap and pending map
    assert c["log_bytes"] == limits.log_memory("ring", [1 << 16], 2, cmp.RING_ENTRIES)
    assert c["log_bytes"] > 2 * cmp.RING_ENTRIES * 16


def test_many_slot_layout():
    c = cmp.run_cell(0.0625, 200, "twolevel", layout="many", slot_gib=0.015625, repeats=2)
    assert c["status"] == "ok" and c["slots"] == 4 and c["found"] == 200
    assert c["collect_call"] == "collect_slots"  # guest-wide: one C call over the 4 slots
    assert c["stats"]["collect_calls"] == 1
    slots = cmp.slot_layout(10 << 18, "many", 4)
    assert [s[2] for s in slots] == [4 << 18, 4 << 18, 2 << 18]


def test_log_bytes():
    """The one model of log memory (limits.log_memory, checked against C's
    kd_log_memory in test_log_memory.py), at 512 GiB in one slot."""
    one = cmp.slot_layout(512 << 18, "one", 1)
    bm, pending_summary = 16 << 20, 4 << 10   # a bit per page; a bit per 64 words
    assert cmp.log_bytes("flat", one) == bm
    assert cmp.log_bytes("twolevel", one) == bm + (32 << 10)
    assert cmp.log_bytes("bytemap", one) == bm + (512 << 18) + bm   # + byte map, GET scratch
    # the kernel's live bitmap and GET buffer, the user side's GET target and pending map
    assert cmp.log_bytes("kvm", one) == 2 * bm + 2 * bm + pending_summary
    assert cmp.log_bytes("uffd", one) == 2 * bm + pending_summary
    # two vCPUs' rings, the slot's protection bitmap and pending map
    assert cmp.log_bytes("ring", one, vcpus=2) == 2 * 65536 * 16 + 2 * bm + pending_summary
    assert bm < cmp.log_bytes("hier", one) < 1.03 * bm   # reserved whole, committed as dirtied


def test_deterministic_is_repeatable_and_has_no_clock():
    s = cmp.Scenario(sizes_gib=[0.015625], dirty=[0, 50], backends=["flat", "twolevel", "ring"],
                     repeats=2, deterministic=True)
    a = cmp.run_compare(s)
    b = cmp.run_compare(s)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    for c in a["cells"]:
        assert c["collect_ns"] is None and c["modelled_collect_ns"] is not None
    flat = [c for c in a["cells"] if c["backend"] == "flat" and c["dirty"] == 50][0]
    assert flat["ratio_flat"] == 1.0


def test_ratios_against_kvm_reference():
    m = CostModel()
    cells = [dict(size_gib=1, dirty=0, backend=b, layout="one", slot_gib=None, slots=1,
                  deterministic=False, status="ok", collect_ns=t, modelled_collect_ns=None)
             for b, t in (("flat", 100.0), ("twolevel", 10.0))]
    cmp.add_ratios(cells, m)
    assert cells[1]["ratio_flat"] == pytest.approx(0.1)
    assert cells[0]["kvm_ref"] == "model"
    assert cells[0]["kvm_ref_ns"] == pytest.approx(m.kernel_get_ns(1 << 18, 0))
    cells.append(dict(cells[0], backend="kvm", collect_ns=1000.0))
    cmp.add_ratios(cells, m)
    assert cells[1]["kvm_ref"] == "measured" and cells[1]["ratio_kvm"] == pytest.approx(0.01)


def test_goals_are_reported_where_cells_exist():
    base = dict(size_gib=512, dirty=1000, layout="one", slot_gib=None, slots=1,
                deterministic=False, status="ok", modelled_collect_ns=None)
    cells = [dict(base, backend=b, collect_ns=t) for b, t in
             (("flat", 1400e3), ("twolevel", 50e3), ("read", 1300e3),
              ("flatnonzero", 7000e3))]
    cmp.add_ratios(cells)
    g = {x["goal"].split(" (")[0]: x for x in cmp.goals(cells)}
    assert g["two-level log vs a flat bitmap scan"]["value"] == pytest.approx(28.0)
    assert g["two-level log vs a flat bitmap scan"]["met"]
    assert g["flat bitmap scan vs only reading its bitmap"]["met"]
    fnz = g["flat bitmap scan vs numpy flatnonzero"]
    assert fnz["value"] == pytest.approx(5.0)
    # ~14 ms / 50 us < 300
    assert not g["two-level log vs the kernel's KVM_GET_DIRTY_LOG"]["met"]


def test_plot_is_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is the 'plot' extra")
    png = tmp_path / "c.png"
    rc, out, _ = run_cli(capsys, "--sizes", "0.015625,0.03125", "--dirty", "0,20",
                         "--backends", "flat,twolevel,read", "--repeats", "1",
                         "--plot", str(png))
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_unavailable_backend_is_skipped_with_reason(monkeypatch):
    from pykvmdirty.analysis.compare import run as compare_run
    monkeypatch.setattr(compare_run, "backend_available", lambda b: (False, "no /dev/kvm here"))
    c = cmp.run_cell(0.015625, 10, "kvm", repeats=1)
    assert c["status"] == "skipped" and c["reason"] == "no /dev/kvm here"


@pytest.mark.parametrize("argv, words", [
    (["--sizes", "-1"], "-1"),
    (["--sizes", "abc"], "abc"),
    (["--sizes", "0.0000001"], "whole number of 4 KiB pages"),
    (["--dirty", "-5"], "-5"),
    (["--dirty", "100000", "--sizes", "0.015625"], "100000 dirty pages do not fit"),
    (["--backends", "flat,bogus"], "bogus"),
    (["--backends", "all,flat"], "all"),
    (["--backends", "flat,flat"], "twice"),
    (["--repeats", "0"], "must be >= 1"),
    (["--layout", "some"], "some"),
    (["--seed", "-1"], "must be >= 0"),
    (["--slot-gib", "0"], "slot-gib"),
    (["--layout", "many", "--slot-gib", "0.000001", "--sizes", "1"], "whole number"),
])
def test_bad_options_give_clear_errors(capsys, argv, words):
    try:
        rc = main(["compare", "--no-progress", "--repeats", "1", *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert words in err, err


def test_bad_cost_model_file(tmp_path, capsys):
    p = tmp_path / "cal.json"
    p.write_text('{"nope_ns": 3}')
    rc = main(["compare", "--no-progress", "--sizes", "0.015625", "--cost-model", str(p)])
    assert rc == 2 and "nope_ns" in capsys.readouterr().err


def test_scenario_validation():
    with pytest.raises(ValueError, match="layout"):
        cmp.Scenario(layout="few")
    with pytest.raises(ValueError, match="repeats"):
        cmp.Scenario(repeats=0)
    with pytest.raises(ValueError, match="exceed"):
        cmp.Scenario(sizes_gib=[512], layout="many", slot_gib=0.015625)
    with pytest.raises(ValueError, match="pages per slot"):
        cmp.Scenario(sizes_gib=[1], layout="many", slot_gib=8192)
    with pytest.raises(ValueError, match="slots"):
        cmp.Scenario(sizes_gib=[32768 * 8192])


TIB_GIB = 1024


def test_a_guest_over_kvms_slot_cap_is_the_fewest_equal_slots():
    assert cmp.slot_layout(8191 * cmp.PAGES_PER_GIB, "one", 1) == [(0, 0, 8191 << 18)]
    slots = cmp.slot_layout(24 * TIB_GIB * cmp.PAGES_PER_GIB, "one", 1)
    assert [(s[1], s[2]) for s in slots] == [(i * (6 << 28), 6 << 28) for i in range(4)]
    # 8 TiB is one page over the cap: two slots of 4 TiB
    slots = cmp.slot_layout(8 * TIB_GIB * cmp.PAGES_PER_GIB, "one", 1)
    assert [s[2] for s in slots] == [4 << 28, 4 << 28]
    for npages in (cmp.MAX_SLOT_PAGES + 1, 3 * cmp.MAX_SLOT_PAGES + 5, 20 << 28):
        slots = cmp.slot_layout(npages, "one", 1)
        assert sum(s[2] for s in slots) == npages
        assert all(s[2] <= cmp.MAX_SLOT_PAGES for s in slots)
        assert all(s[1] % kd.CHUNK_PAGES == 0 for s in slots)


def test_hier_at_24_tib_collects_every_slot_in_one_call():
    c = cmp.run_cell(24 * TIB_GIB, 300, "hier", repeats=2)
    assert c["status"] == "ok", c["reason"]
    assert c["slots"] == 4 and c["collect_call"] == "collect_slots"
    assert c["found"] == 300
    # the pages really span the slots: the check inside run_cell compared them
    pages = cmp.dirty_pages(24 * TIB_GIB * cmp.PAGES_PER_GIB, 300, 0)
    assert int(pages[-1]) >= 3 * (6 << 28) > int(pages[0])


def test_a_cell_over_the_memory_limit_is_skipped_with_the_reason():
    s = cmp.Scenario(sizes_gib=[24 * TIB_GIB], dirty=[10], backends=["hier", "flat", "kvm"],
                     repeats=1)
    r = cmp.run_compare(s, max_memory="256MiB")
    by = {c["backend"]: c for c in r["cells"]}
    assert by["hier"]["status"] == "ok" and by["hier"]["found"] == 10
    for b in ("flat", "kvm"):
        assert by[b]["status"] == "skipped"
        assert ("sizes_gib 24576 with backend %s needs an estimated" % b) in by[b]["reason"]
        assert "more than the limit of 256.0 MiB" in by[b]["reason"]
    # the kernel's rmap makes kvm the hungriest: ~10 bytes per page
    est = cmp.cell_estimate(s.cells()[2])
    assert est.total > 24 * TIB_GIB * cmp.PAGES_PER_GIB * 10
    assert "kernel slot metadata (rmap) 60.0 GiB" in by["kvm"]["reason"]
    # uffd write-protects the untouched guest with a pte marker per page
    uffd = dict(s.cells()[0], backend="uffd")
    assert "page tables of the write-protected guest 48.0 GiB" in \
        cmp.cell_estimate(uffd).describe()
    assert "skipped: memory: sizes_gib 24576 with backend flat" in cmp.format_table(r)


def test_cli_large_sizes_report_skipped_rows(capsys):
    rc, out, _ = run_cli(capsys, "--sizes", "24576", "--dirty", "5", "--backends",
                         "hier,flat", "--repeats", "1", "--max-memory", "128MiB")
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("24576")]
    assert len(rows) == 2, out
    assert rows[0].split()[2] == "hier" and rows[0].split()[-1] == "5"
    assert "skipped: memory:" in rows[1]


def test_the_table_names_the_question_not_our_bookkeeping():
    base = dict(size_gib=512, dirty=1000, layout="one", slot_gib=None, slots=1,
                deterministic=False, status="ok", modelled_collect_ns=None, repeats=1,
                found=1000, log_bytes=16 << 20, log_resident_bytes=None)
    cells = [dict(base, backend=b, collect_ns=t) for b, t in
             (("flat", 1400e3), ("twolevel", 50e3), ("read", 1300e3))]
    cmp.add_ratios(cells)
    text = cmp.format_table({"scenario": {"repeats": 1}, "cells": cells,
                             "goals": cmp.goals(cells)})
    assert "issue" not in text.lower()
    assert "1000 dirty pages found in a 512 GiB guest" in text
    assert "two-level log vs a flat bitmap scan: 28x faster (target >= 25x)" in text
    assert "flat bitmap scan vs only reading its bitmap: 1.08x the time" in text
