"""pykvmdirty sweep: a 2x2 grid through local processes and a Dask
LocalCluster gives identical results in deterministic mode; merged JSON, CSV
and PNG outputs; clear errors for bad options."""
import concurrent.futures
import csv
import json

import pytest

from pykvmdirty.analysis import sweep as sw
from pykvmdirty.cli import main

GRID = sw.Grid(sizes_gib=(0.015625, 0.03125), dirty=(0, 64), backends=("flat", "twolevel"),
               repeats=2, deterministic=True)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def local_result():
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as ex:
        return sw.run_sweep(GRID, ex)


def test_local_processes_cover_the_grid(local_result):
    cells = local_result["cells"]
    assert [(c["size_gib"], c["dirty"], c["backend"]) for c in cells] == [
        (s, d, b) for s in GRID.sizes_gib for d in GRID.dirty for b in GRID.backends]
    for c in cells:
        assert c["status"] == "ok" and c["found"] == c["dirty"]
        assert c["collect_ns"] is None  # deterministic: no clocks
        assert c["modelled_collect_ns"] > 0
    # same result run here, in order, without an executor
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        assert sw.comparable(sw.run_sweep(GRID, ex)) == sw.comparable(local_result)


def test_dask_localcluster_gives_identical_results(local_result):
    distributed = pytest.importorskip(
        "dask.distributed",
        reason="dask.distributed is not installed (pip install 'pykvmdirty[dask]'; "
        "the test extra installs it)")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with sw.dask_executor(cluster.scheduler_address) as ex:
            result = sw.run_sweep(GRID, ex)
    assert sw.comparable(result) == sw.comparable(local_result)
    assert len(result["cells"]) == 8


def test_sweep_cli_writes_merged_json_csv_png(tmp_path, capsys):
    js, cs, png = tmp_path / "s.json", tmp_path / "s.csv", tmp_path / "s.png"
    rc = main(["sweep", "--no-progress", "--workers", "2", "--sizes", "0.015625,0.03125",
               "--dirty", "0,64", "--backends", "flat,twolevel", "--layouts", "one,many",
               "--slot-gib", "0.0078125", "--repeats", "1", "--json", str(js), "--csv",
               str(cs), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0 and "layout many" in out
    result = json.loads(js.read_text())
    assert len(result["cells"]) == 2 * 2 * 2 * 2
    rows = list(csv.DictReader(cs.open()))
    assert len(rows) == 16 and {r["layout"] for r in rows} == {"one", "many"}
    assert {"stat_write_faults", "modelled_collect_ns"} <= set(rows[0])
    if png.exists():  # matplotlib installed
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert (tmp_path / "s-many.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv, words", [
    (["--dask", "localhost"], "tcp://HOST:PORT"),
    (["--dask", "tcp://127.0.0.1:1", "--workers", "2"], "--workers"),
    (["--layouts", "one,few"], "few"),
    (["--layouts", "one,one"], "twice"),
    (["--timed", "--deterministic"], "contradict"),
    (["--workers", "0"], "must be >= 1"),
    (["--backends", "nope"], "nope"),
])
def test_bad_sweep_options(capsys, argv, words):
    try:
        rc = main(["sweep", "--no-progress", "--sizes", "0.015625", "--dirty", "0", *argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err


def test_unreachable_dask_scheduler_is_a_clear_error():
    pytest.importorskip("dask.distributed", reason="dask.distributed is not installed")
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler"):
        with sw.dask_executor("tcp://127.0.0.1:9", timeout=1):
            pass
