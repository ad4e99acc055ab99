"""``pykvmdirty calibrate``: a loadable cost model from the real kernel, or a
non-zero exit with the reason where /dev/kvm is unusable. Timings are only
checked for being finite and non-negative (never compared)."""
import json
import math

import pytest

from pykvmdirty.analysis import calibrate as cal
import pykvmdirty as kd
from pykvmdirty import cli
from pykvmdirty.costmodel import CostModel


@pytest.fixture(scope="module")
def kvm_reason():
    return cal.kvm_unusable_reason()


@pytest.fixture
def need_kvm(kvm_reason):
    if kvm_reason:
        pytest.skip("calibration needs the real kernel: %s" % kvm_reason)


def test_measured_fields_exist_in_the_cost_model():
    assert set(cal.MEASURED) <= set(CostModel.field_names())


def test_unusable_kvm_exits_nonzero_with_the_reason(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cal, "kvm_unusable_reason",
                        lambda: "/dev/kvm unusable: No such file or directory")
    out = tmp_path / "cal.json"
    assert cli.main(["calibrate", "--quick", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pykvmdirty calibrate: /dev/kvm unusable: No such file or directory" in err
    assert not out.exists()
    with pytest.raises(cal.KvmUnusable, match="No such file"):
        cal.calibrate(quick=True)


def test_real_outcome_matches_availability(kvm_reason, capsys, tmp_path):
    """Runs anywhere: the real command fails with the reason iff kvm is unusable."""
    out = tmp_path / "cal.json"
    rc = cli.main(["calibrate", "--quick", "--out", str(out)])
    captured = capsys.readouterr()
    if kvm_reason:
        assert rc == 1 and kvm_reason in captured.err and not out.exists()
    else:
        assert rc == 0 and out.exists(), captured.err


def test_quick_writes_a_loadable_model(need_kvm, tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert cli.main(["calibrate", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for what in ("GET per GiB", "re-protect per dirty page", "write fault per page",
                 "CLEAR per call", "ring harvest per entry", "ring reset per entry"):
        assert what in text
    model = CostModel.load(str(out))
    data = json.loads(out.read_text())
    assert data["format"] == "pykvmdirty-cost-model" and data["version"] == 1
    assert set(data["fields"]) == set(CostModel.field_names())
    for f in cal.MEASURED:  # each measured field says where and when
        assert data["fields"][f]["source"].startswith("measured by `pykvmdirty calibrate")
    # the same file drives the migration's virtual clock
    report = kd.migrate(guest_size="16MiB", slots=1, cost_model=str(out), max_passes=2)
    assert report.config["cost_model"] == model.to_dict()
    for f in cal.MEASURED:
        v = getattr(model, f)
        assert math.isfinite(v) and v >= 0, (f, v)
    # measured, not left at the defaults
    assert model.word_ns != CostModel().word_ns
    assert model.ring_harvest_ns != CostModel().ring_harvest_ns
    assert model.summary_word_ns == model.word_ns


def test_json_on_stdout_and_usable_by_the_emulator(need_kvm, capsys):
    assert cli.main(["calibrate", "--quick"]) == 0
    cap = capsys.readouterr()
    model = CostModel.from_dict(json.loads(cap.out))
    assert "measuring:" in cap.err
    with kd.VM("flat") as vm:
        vm.set_user_memory_region(0, 0, 1 << 30, kd.MEM_LOG_DIRTY_PAGES)
        vm.reset_stats()
        vm.write([1, 2, 3])
        vm.collect(0)
        st = vm.stats
    b = model.breakdown(st, backend="flat")
    assert b["write_faults"] == 3 * model.write_fault_ns
    assert b["pages_reprotected"] == 3 * model.reprotect_ns
    assert b["words_scanned"] == (1 << 12) * model.word_ns


def test_details_report_every_measurement(need_kvm):
    model, details = cal.calibrate(quick=True, seed=1)
    assert details["mode"] == "quick"
    assert set(cal.MEASURED) <= set(details["measured"])
    assert details["ring_harvested_per_round"] == details["ring_entries"] - 64
    lines = cal.summary(model, details)
    assert any("ring-full exit" in line for line in lines)
