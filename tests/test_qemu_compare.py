"""The blind comparison with real QEMU (pykvmdirty/qemu/compare.py, calibration.py,
commands/qemu.py) without QEMU: the runner is replaced by a fake.

- the prediction is in the JSON file, with the calibration's sha256 and a
  timestamp, when the runner is called (the fake reads the file);
- the prediction does not read the run's samples (poisoned runs: the same
  prediction);
- the repeat statistics and the spread rule on hand-made numbers;
- calibration files: every malformed field named;
- a ring cell skipped with the reason where KVM or its ring is missing.

The prediction is the real pykvmdirty.qemu.predict where it exists, else a
fake one (the contract: a dict of query-migrate's figures).
"""
import json
import math
from types import SimpleNamespace

import pytest

from pykvmdirty.qemu import calibration as cal
from pykvmdirty.qemu import compare
from pykvmdirty.qemu.config import QemuConfig

try:
    from pykvmdirty.qemu import predict as real_predict  # noqa: F401
    HAVE_PREDICT = True
except ImportError:
    HAVE_PREDICT = False

MIB = 1 << 20
SMALL = dict(guest_size=128 * MIB, end=32 * MIB, timeout=10.0)   # a quick prediction


def make_calibration(**over):
    values = dict(send_normal_s=3e-6, send_zero_s=0.4e-6, send_normal_stopped_s=2.5e-6,
                  downtime_overhead_s=3e-3, setup_s=2e-3, guest_write_s=3e-8,
                  guest_fault_s=20e-6, guest_fault_iter_s=20e-6, guest_fault_random_s=25e-6,
                  fault_contention_s=0.0, sync_s=40e-6,
                  ring_harvest_s=4e-9, ring_reset_s=0.5e-6)
    values.update(over)
    sources = {k: "hand-made for the test" for k in cal.COSTS}
    sources["guest_fault_iter_s"] = "assumed: equal to guest_fault_s"
    return cal.Calibration(sources=sources, machine="test cpu", date="2026-01-01 00:00:00 UTC",
                           accel="kvm", qemu_version="QEMU emulator version 7.2.0",
                           interface="bitmap", **values)


def fake_predict(config, calibration, interface="bitmap"):
    """Deterministic in the config and the calibration alone."""
    pages = config.npages
    t = pages * calibration.send_normal_s + calibration.setup_s
    return {"status": "completed", "total_time": t, "setup_time": calibration.setup_s,
            "downtime": 0.01, "expected_downtime": 0.01, "dirty_sync_count": 3,
            "transferred": pages * 4104, "normal": pages, "duplicate": 1000,
            "throttle_max": 0, "passes": [], "inputs": calibration.inputs()}


@pytest.fixture
def predicted(monkeypatch):
    """compare.predict_cell: the real one where predict.py exists, else the fake."""
    if not HAVE_PREDICT:
        monkeypatch.setattr(compare, "predict_cell", fake_predict)
        monkeypatch.setattr(compare, "check_prediction", lambda: None)
    return compare.predict_cell


def fake_result(config, k=0, poison=False):
    samples = [dict(t=0.1 * i, status="active", throttle=0, expected_downtime=0.0,
                    guest_pages=i * 100, transferred=i * 4104 * 50, normal=i * 50,
                    duplicate=i * 10, dirty_sync_count=1 + i // 3, precopy_bytes=0,
                    downtime_bytes=0, mbps=100.0, dirty_pages_rate=1000, remaining=1000,
                    pages_per_second=5000, normal_bytes=0) for i in range(6)]
    if poison:
        for s in samples:
            for key in s:
                if key != "status":
                    s[key] = float("nan")
    d = dict(status="completed", total_time=1.0 + 0.1 * k, setup_time=0.002,
             downtime=0.02 + 0.001 * k, expected_downtime=0.02, dirty_sync_count=4 + k % 2,
             transferred=100_000_000 + k, normal=24000 + 100 * k, duplicate=240000,
             throttle_max=0, normal_bytes=0, precopy_bytes=0, downtime_bytes=4104 * 100,
             guest_rate=1e6, guest_rate_migrating=5e4, accel="kvm", accel_note="KVM",
             verification={}, samples=samples)
    return SimpleNamespace(as_dict=lambda: dict(d), **d)


def test_the_prediction_is_on_disk_before_the_first_run(tmp_path, monkeypatch, predicted):
    path = str(tmp_path / "grid.json")
    calfile = str(tmp_path / "cal.json")
    c = make_calibration()
    c.save(calfile)
    h = cal.file_hash(calfile)
    seen = []

    def run_migration(config, on_sample=None):
        with open(path) as f:                      # what is on disk right now
            doc = json.load(f)
        cell = doc["cells"][-1]
        seen.append((len(cell["runs"]), cell["prediction"], cell["calibration_sha256"],
                     cell["predicted_at"]))
        return fake_result(config, len(seen))

    monkeypatch.setattr(compare, "run_migration", run_migration)
    store = compare.GridStore(path, {"repeat": 3})
    cfg = QemuConfig(workload="ab", bandwidth=1 << 30, **SMALL)
    cell = compare.run_cell("ab", cfg, c, h, 3, store)
    assert len(seen) == 3
    expected = json.loads(json.dumps(predicted(cfg, c, "bitmap")))
    for i, (nruns, pred, sha, at) in enumerate(seen):
        assert nruns == i                          # earlier runs stored, this one not yet
        assert pred == expected                    # the prediction, before every run
        assert sha == h and len(sha) == 64
        assert at.endswith("Z") and at <= cell["runs"][0]["started_at"]
    with open(path) as f:
        doc = json.load(f)
    assert len(doc["cells"][0]["runs"]) == 3 and "judged" in doc["cells"][0]


def test_poisoned_runs_leave_the_prediction_unchanged(tmp_path, monkeypatch, predicted):
    c = make_calibration()
    cfg = QemuConfig(workload="uniform", rate=20000, bandwidth=128 * MIB, **SMALL)
    preds = []
    for poison in (False, True):
        monkeypatch.setattr(compare, "run_migration",
                            lambda config, on_sample=None, p=poison: fake_result(config,
                                                                                 poison=p))
        store = compare.GridStore(str(tmp_path / ("g%d.json" % poison)), {})
        cell = compare.run_cell("u", cfg, c, "0" * 64, 2, store)
        preds.append(json.dumps(cell["prediction"], sort_keys=True))
        assert math.isnan(cell["runs"][0]["samples"][1]["normal"]) == poison
    assert preds[0] == preds[1]
    assert preds[0] == json.dumps(predicted(cfg, c, "bitmap"), sort_keys=True)


def test_repeat_statistics_median_and_min_max():
    assert compare.spread([5, 1, 3, 2, 4]) == {"median": 3.0, "min": 1.0, "max": 5.0, "n": 5}
    assert compare.spread([1, 2]) == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    assert compare.spread([]) is None
    assert compare.majority(["completed", "timeout", "completed"]) == "completed"


def test_bands_around_the_median():
    assert compare.band("syncs", 5) == (4, 6)
    assert compare.band("syncs", 20) == pytest.approx((16, 24))     # +-20 % above 10
    assert compare.band("transferred", 100) == pytest.approx((80, 120))
    assert compare.band("normal", 100) == pytest.approx((80, 120))
    assert compare.band("total_time", 1.0) == pytest.approx((0.7, 1.3))
    assert compare.band("downtime", 1.0) == pytest.approx((0.5, 1.5))
    assert compare.band("downtime", 0.02) == pytest.approx((-0.03, 0.07))  # +-50 ms


def test_the_spread_rule():
    # runs 4, 5, 5, 5, 9 syncs: median 5, band [4, 6] (width 2), spread 5 wider:
    # a prediction of 8 is outside the band but inside [4, 9]
    st = compare.spread([4, 5, 5, 5, 9])
    j = compare.judge("syncs", 8, st)
    assert j == {"ok": True, "against": "spread", "band": [4.0, 6.0]}
    assert compare.judge("syncs", 10, st)["ok"] is False
    assert compare.judge("syncs", 6, st)["ok"] is True              # in the band anyway
    # a narrow spread: judged against the median's band only
    st = compare.spread([5, 5, 6, 5, 5])
    assert compare.judge("syncs", 7, st) == {"ok": False, "against": "median",
                                             "band": [4.0, 6.0]}
    # total time: runs 1.0-1.1 s, band +-30 % of 1.05
    st = compare.spread([1.0, 1.05, 1.1])
    assert compare.judge("total_time", 1.3, st)["ok"] is True
    assert compare.judge("total_time", 1.4, st)["ok"] is False


def test_summarise_judges_against_the_median_and_names_the_mechanism():
    cfg = QemuConfig(workload="ab", bandwidth=1 << 30)
    runs = [fake_result(cfg, k).as_dict() for k in range(5)]
    pred = dict(status="completed", total_time=1.2, setup_time=0.002, downtime=0.5,
                dirty_sync_count=4, transferred=100_000_000, normal=24200, duplicate=240000,
                throttle_max=0, passes=[])
    cell = {"name": "c", "config": cfg.as_dict(), "prediction": pred, "runs": runs}
    compare.summarise(cell, make_calibration())
    assert cell["stats"]["total_time"]["median"] == pytest.approx(1.2)
    assert cell["stats"]["total_time"]["min"] == pytest.approx(1.0)
    assert cell["stats"]["total_time"]["max"] == pytest.approx(1.4)
    assert {g: j["ok"] for g, j in cell["judged"].items()} == {
        "status": True, "syncs": True, "transferred": True, "normal": True,
        "total_time": True, "downtime": False}
    assert set(cell["why"]) == {"downtime"}
    # median against median: 100 pages in a 22 ms downtime less the 3 ms overhead
    assert cell["why"]["downtime"][0] == ("send time per normal page with the VM stopped: "
                                          "measured 190.0 us, model 2.5 us")


def test_ring_vs_bitmap_compares_the_signs():
    def cell(name, interface, pred_t, runs_t):
        cfg = QemuConfig(workload="uniform", rate=20000, interface=interface)
        st = {k: compare.spread([1.0]) for k in compare.FIGURES}
        st["total_time"] = compare.spread(runs_t)
        pred = {k: 1.0 for k in compare.FIGURES}
        pred["total_time"] = pred_t
        return {"name": name, "config": cfg.as_dict(), "prediction": pred, "stats": st}

    pairs = compare.ring_vs_bitmap([cell("b", "bitmap", 1.0, [1.0, 1.1, 1.2]),
                                    cell("r", "ring", 1.5, [1.4, 1.5, 1.6])])
    assert len(pairs) == 1 and (pairs[0]["ring"], pairs[0]["bitmap"]) == ("r", "b")
    f = pairs[0]["figures"]["total_time"]
    assert f["same_sign"] and f["measured"] == pytest.approx(0.4) and not f["within_spread"]
    pairs = compare.ring_vs_bitmap([cell("b", "bitmap", 1.0, [1.0, 1.1, 1.2]),
                                    cell("r", "ring", 0.9, [1.1, 1.15, 1.2])])
    f = pairs[0]["figures"]["total_time"]
    assert not f["same_sign"] and f["within_spread"]


def test_a_ring_cell_is_skipped_with_the_reason(monkeypatch):
    from pykvmdirty.qemu import process
    cfg = QemuConfig(workload="uniform", rate=20000, interface="ring")
    monkeypatch.setattr(process, "dirty_ring_unavailable",
                        lambda entries=4096: "/dev/kvm is not usable: No such file")
    why = compare.skip_reason(cfg, {"kvm": make_calibration()}, "kvm")
    assert why == "dirty ring cell: /dev/kvm is not usable: No such file"
    monkeypatch.setattr(process, "dirty_ring_unavailable", lambda entries=4096: None)
    assert compare.skip_reason(cfg, {"kvm": make_calibration()}, "kvm") is None
    # a TCG cell without a TCG calibration
    why = compare.skip_reason(QemuConfig(accel="tcg"), {"kvm": make_calibration()}, "kvm")
    assert why.startswith("no TCG calibration given")
    with pytest.raises(ValueError, match="needs accel kvm or auto"):
        QemuConfig(interface="ring", accel="tcg")


def test_the_dirty_ring_probe_answers_here():
    from pykvmdirty.qemu.process import dirty_ring_unavailable
    why = dirty_ring_unavailable()
    assert why is None or isinstance(why, str) and why


def test_the_held_out_grid_spans_the_issue():
    cells = compare.grid_configs(QemuConfig(), compare.HELDOUT)
    cfgs = [c for _, c in cells]
    assert len(cells) >= 12 and len({n for n, _ in cells}) == len(cells)
    assert {c.workload for c in cfgs} >= {"ab", "uniform", "hotspot"}
    assert {c.bandwidth for c in cfgs} >= {128 * MIB, 256 * MIB, 1 << 30, compare.UNLIMITED}
    assert {c.downtime_limit for c in cfgs} >= {0.1, 0.3, 1.0}
    assert {c.auto_converge for c in cfgs} == {True, False}
    assert {c.guest_size for c in cfgs} >= {1 << 30, 2 << 30, 4 << 30}
    assert {c.interface for c in cfgs} == {"bitmap", "ring"}
    assert sum(c.accel == "tcg" for c in cfgs) >= 2
    # every ring cell has a bitmap twin
    twins = {json.dumps(dict(c.as_dict(), interface=None), sort_keys=True)
             for c in cfgs if c.interface == "bitmap"}
    for c in cfgs:
        if c.interface == "ring":
            assert json.dumps(dict(c.as_dict(), interface=None), sort_keys=True) in twins
    # no grid cell is a calibration cell
    calib = [json.dumps(c.as_dict(), sort_keys=True)
             for c in cal.calibration_configs().values()]
    for c in cfgs:
        assert json.dumps(c.as_dict(), sort_keys=True) not in calib


# -- calibration files -----------------------------------------------------------------------

def test_calibration_round_trip(tmp_path):
    c = make_calibration()
    p = str(tmp_path / "c.json")
    c.save(p)
    back = cal.load(p)
    assert back.inputs() == c.inputs()
    assert back.assumed("guest_fault_iter_s") and not back.assumed("send_normal_s")
    assert cal.file_hash(p) == cal.file_hash(p) and len(cal.file_hash(p)) == 64


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["fields"].pop("send_zero_s"), "field send_zero_s is missing"),
    (lambda d: d["fields"]["sync_s"].update(value="1"), "field sync_s must be a finite"),
    (lambda d: d["fields"]["sync_s"].update(value=-1.0), r"field sync_s must be in \[0"),
    (lambda d: d["fields"]["setup_s"].update(value=1e9), r"field setup_s must be in \[0"),
    (lambda d: d["fields"]["guest_fault_s"].update(source=""), "field guest_fault_s: source"),
    (lambda d: d["fields"]["guest_fault_s"].pop("source"), "field guest_fault_s must be"),
    (lambda d: d["fields"].update(bogus={"value": 1, "source": "x"}), "unknown field.*bogus"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(accel="xen"), "field accel must be"),
    (lambda d: d.update(machine=5), "field machine must be a text"),
    (lambda d: d.update(fields=[]), "'fields' must be an object"),
])
def test_calibration_file_errors_name_the_field(tmp_path, edit, message):
    d = make_calibration().to_file_dict()
    edit(d)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        cal.load(str(p))


def test_calibration_file_bounded_and_json(tmp_path):
    p = tmp_path / "big.json"
    p.write_text(" " * (cal.MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="more than"):
        cal.load(str(p))
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cal.load(str(p))
    with pytest.raises(ValueError, match="cannot be read"):
        cal.load(str(tmp_path / "missing.json"))
    p.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        cal.load(str(p))


def test_costs_from_cells_says_what_is_assumed():
    cfgs = cal.calibration_configs("kvm")

    def res(total, setup, down, normal, dup, down_pages, rate, samples=()):
        return SimpleNamespace(accel="kvm", accel_note="KVM", status="completed",
                               total_time=total, setup_time=setup, downtime=down,
                               dirty_sync_count=3, transferred=0, normal=normal,
                               duplicate=dup, downtime_bytes=down_pages * 4104,
                               guest_rate=rate, samples=list(samples))
    S = dict(status="active", throttle=0, transferred=0)
    fault = [dict(S, t=0.1, guest_pages=0, dirty_sync_count=1, normal=0, duplicate=0),
             dict(S, t=0.2, guest_pages=25000, dirty_sync_count=1, normal=0, duplicate=0),
             dict(S, t=0.8, guest_pages=25000, dirty_sync_count=1, normal=0, duplicate=0),
             dict(S, t=1.0, guest_pages=60000, dirty_sync_count=1, normal=0, duplicate=0)]
    U = dict(S, dirty_sync_count=1, duplicate=0)
    ufault = [dict(U, status="setup", t=0.0, guest_pages=100, normal=0),
              dict(U, t=0.1, guest_pages=4100, normal=800)]
    ubusy = [dict(U, status="setup", t=0.0, guest_pages=100, normal=0),
             dict(U, t=0.1, guest_pages=3100, normal=5000)]
    results = {"idle": res(0.105, 0.002, 0.003, 18, 262210, 2, 0.0),
               "ab": res(3.0, 0.002, 1.003, 200000, 262000, 100000, 2e7),
               "ab-fault": res(5.0, 0.002, 0.0, 0, 0, 0, 2e7, fault),
               "ab-iter": res(2.0, 0.002, 0.001, 0, 0, 0, 2e7),
               "uniform-fault": res(1.5, 0.002, 0.0, 0, 0, 0, 4e5, ufault),
               "uniform-busy": res(0.5, 0.002, 0.001, 0, 0, 0, 4e5, ubusy),
               "uniform-stop": res(0.5, 0.002, 0.023, 30000, 240000, 4002, 3e4)}
    c = cal.costs_from_cells(results, cfgs)
    # random first writes: 4000 draws over n pages set n (1 - e^(-4000/n)) bits
    n = cfgs["uniform-fault"].npages
    first = n * (1 - math.exp(-4000 / n))
    assert c.guest_fault_random_s == pytest.approx((0.1 - 4000 * 5e-8) / first)
    first = n * (1 - math.exp(-3000 / n))
    assert c.fault_contention_s == pytest.approx((0.1 - 5000 * c.send_normal_s) / first)
    assert not c.assumed("guest_fault_random_s") and not c.assumed("fault_contention_s")
    assert c.send_zero_s == pytest.approx(0.1 / 262228)
    # the uniform stop cell's resent pages: (23 - 3 ms) / (4002 - 2 pages)
    assert c.send_normal_stopped_s == pytest.approx(0.020 / 4000)
    assert "uniform stop cell" in c.sources["send_normal_stopped_s"]
    # too few pages in that downtime: the a-b cell's first sends, and the source says so
    few = dict(results, **{"uniform-stop": res(0.5, 0.002, 0.004, 30000, 240000, 100, 3e4)})
    c2 = cal.costs_from_cells(few, cfgs)
    assert c2.send_normal_stopped_s == pytest.approx(1.0 / 99998)
    assert "first sends" in c2.sources["send_normal_stopped_s"]
    assert c.guest_write_s == pytest.approx(5e-8)
    # from the start of logging (0.1 s) to the counter's second move (midpoint 0.9 s)
    assert c.guest_fault_s == pytest.approx(0.8 / cfgs["ab-fault"].npages - 5e-8)
    assert not c.assumed("guest_fault_s")
    assert c.assumed("guest_fault_iter_s") and c.guest_fault_iter_s == c.guest_fault_s
    assert c.assumed("sync_s") and c.assumed("ring_reset_s")
    assert "whole precopy phase" in c.sources["send_normal_s"]
    results["ab-iter"].accel = "tcg"
    with pytest.raises(ValueError, match="different accelerators"):
        cal.costs_from_cells(results, cfgs)


# -- the command ----------------------------------------------------------------------------

def cli(*argv):
    from pykvmdirty.cli import main
    return main(list(argv))


def test_cli_checks_everything_before_any_run(tmp_path, monkeypatch, capsys, predicted):
    ran = []
    monkeypatch.setattr(compare, "run_migration", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(cal, "run_migration", lambda *a, **k: ran.append(1))
    good = str(tmp_path / "c.json")
    make_calibration().save(good)
    bad_dir = str(tmp_path / "nope" / "x.json")
    assert cli("qemu", "--calibration", good, "--json", bad_dir) == 2
    assert "--json" in capsys.readouterr().err
    assert cli("qemu", "--json", str(tmp_path / "g.json")) == 2
    assert "--calibration FILE is required" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert cli("qemu", "--calibration", str(tmp_path / "bad.json"),
               "--json", str(tmp_path / "g.json")) == 2
    assert "calibration file" in capsys.readouterr().err
    assert cli("qemu", "--calibration", good, "--workload", "ab", "--interface", "ring",
               "--accel", "tcg", "--json", str(tmp_path / "g.json")) == 2
    assert "dirty ring" in capsys.readouterr().err
    assert cli("qemu", "--calibration", good, "--grid", "nope",
               "--json", str(tmp_path / "g.json")) == 2
    assert "--grid must be one of" in capsys.readouterr().err
    assert cli("qemu", "--calibration", good, "--json", str(tmp_path / "g.json"),
               "--plot", bad_dir) == 2
    assert "--plot" in capsys.readouterr().err
    assert not ran
    assert not (tmp_path / "g.json").exists()


def test_cli_one_cell_report_lines_up(tmp_path, monkeypatch, capsys, predicted):
    calls = []

    def run_migration(config, on_sample=None):
        calls.append(config)
        return fake_result(config, len(calls))
    monkeypatch.setattr(compare, "run_migration", run_migration)
    good = str(tmp_path / "c.json")
    make_calibration().save(good)
    out = str(tmp_path / "g.json")
    assert cli("qemu", "--calibration", good, "--workload", "ab", "--bandwidth", "1GiB",
               "--guest-size", "128MiB", "--end", "32MiB", "--timeout", "10",
               "--repeat", "3", "--json", out, "--quiet", "--accel", "kvm") == 0
    text = capsys.readouterr().out
    assert len(calls) == 3
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("cell"))
    from pykvmdirty.commands.qemu import WIDTHS
    indent = " " * WIDTHS[0]
    rows = [line for line in lines[head:] if line and not line.startswith(indent + "missed")
            and not line.startswith(indent + " ")][:11]
    # every column starts where its heading does
    starts = [lines[head].index(h) for h in ("figure", "predicted", "median", "[min - max]",
                                             "judged")]
    assert len(rows) == 11
    for row in rows[2:]:
        for s in starts:
            if s < len(row):
                assert row[s - 1] == " " and row[s] != " ", row
    with open(out) as f:
        doc = json.load(f)
    cell = doc["cells"][0]
    assert len(cell["runs"]) == 3 and cell["stats"]["total_time"]["n"] == 3
    assert doc["calibrations"]["kvm"]["sha256"] == cal.file_hash(good)
