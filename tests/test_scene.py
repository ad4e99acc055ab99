"""``pykvmdirty scene`` on a small guest: every cell it runs completes and
verifies in a fresh process, its estimate is reported beside the peak, the
per-pass lines and the JSON say the same, and bad input is one line."""
import json
import subprocess
import sys


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "pykvmdirty", "scene", *argv],
                          capture_output=True, text=True, cwd="/tmp", timeout=300)


def test_a_small_scene_runs_every_cell_it_names(tmp_path):
    out = tmp_path / "scene.json"
    p = cli("--guest-size", "1GiB", "--slots", "2", "--backends", "flat,ring",
            "--strategies", "global,ring", "--rate", "20000", "--bandwidth", "1GiB",
            "--per-pass", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "32.0 KiB bitmap (1 bit/page) or a 256.0 KiB byte map" in p.stdout
    runs = json.loads(out.read_text())["runs"]
    # ring runs on flat (no), ring (yes); global on both
    assert [(r["backend"], r["strategy"]) for r in runs] == \
        [("flat", "global"), ("ring", "global"), ("ring", "ring")]
    for r in runs:
        assert r["verified"] is True and r["pages"] == "versions"
        assert r["syncs"] >= 2 and r["peak_rss"] > 0 and r["estimate"] > 0
        assert abs(r["collect_scan_s"] - sum(p["collect_scan_ms"] for p in r["per_pass"]) / 1e3) \
            < 1e-6
    assert p.stdout.count("    pass ") == sum(len(r["per_pass"]) for r in runs)


def test_bad_scene_input_is_one_line():
    for argv, text in ((("--backends", "flat,kvm"), "unknown 'kvm'"),
                       (("--rate", "nan"), "--rate"),
                       (("--guest-size", "12 parsecs"), "--guest-size"),
                       (("--strategies", ""), "(empty)")):
        p = cli(*argv)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (argv, p.stderr)
