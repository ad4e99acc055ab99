"""Memory estimates: runs the memory limit cannot hold are refused before
anything is allocated (API and CLI, naming the option and the estimate), and
the estimates are honest: within a factor of 2 of what small real runs
commit (peak RSS growth, measured in a fresh process)."""
import json
import subprocess
import sys
import time

import pytest

import pykvmdirty as kd
from pykvmdirty import limits
from pykvmdirty.analysis import compare as cmp

GiB = 1 << 30


def test_migrate_refuses_a_guest_larger_than_the_machine_before_starting():
    avail = limits.available_memory()
    size = "%dGiB" % (4 * avail // GiB + 4)
    t0 = time.monotonic()
    with pytest.raises(limits.MemoryLimitError, match=r"guest_size %s needs an estimated "
                       r"[\d.]+ [GT]iB of memory \(.*source guest memory" % size) as e:
        kd.migrate(guest_size=size, pages="contents")
    assert time.monotonic() - t0 < 5
    assert e.value.estimate > e.value.limit
    assert isinstance(e.value, ValueError)


def test_migrate_limit_is_explicit_and_counts_the_run():
    with pytest.raises(limits.MemoryLimitError, match="more than the limit of 32.0 MiB"):
        kd.migrate(guest_size="64MiB", populate=1.0, max_memory="32MiB")
    # the null sink keeps no destination: the same guest then fits
    kd.migrate(guest_size="64MiB", populate=0.1, sink="null", max_memory="64MiB")
    with pytest.raises(ValueError, match="max_memory must be positive"):
        kd.migrate(guest_size="8MiB", max_memory=0)


def test_compare_refuses_the_issue_grid_above_its_limit():
    s = cmp.Scenario(sizes_gib=[30000], layout="many", slot_gib=1024, backends=["bytemap"])
    est, cell = cmp.memory_estimate(s)
    # 30000 GiB of 4 KiB pages: a byte map (1 B/page) + bitmap and scratch (1 bit/page each)
    pages = 30000 * GiB // 4096
    assert pages * 1.25 <= est.total <= pages * 1.25 * 1.01
    with pytest.raises(limits.MemoryLimitError,
                       match=r"sizes_gib 30000 with backend bytemap .* 9\.2 GiB"):
        cmp.run_compare(s, max_memory="4GiB")


def _peak_rss_growth(code):
    """Run code in a fresh interpreter (after importing pykvmdirty); returns
    the growth of peak RSS in bytes over the RSS before the code ran."""
    # VmHWM, not ru_maxrss: that one starts from the parent's RSS at fork
    prog = ("import json, pykvmdirty as kd\n"
            "from pykvmdirty import limits\n"
            "def status(key):\n"
            "    with open('/proc/self/status') as f:\n"
            "        return next(int(l.split()[1]) for l in f if l.startswith(key)) * 1024\n"
            "before = status('VmRSS:')\n"
            "%s\n"
            "peak = status('VmHWM:')\n"
            "print(json.dumps(dict(growth=peak - before, estimate=estimate)))\n" % code)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=120, cwd="/tmp")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kw", [
    dict(guest_size=256 << 20, populate=1.0, fill="random", workload="idle", rate=0),
    dict(guest_size=512 << 20, populate=0.25, workload="idle", rate=0, backend="bytemap"),
    dict(guest_size=256 << 20, populate=0.5, fill="random", workload="uniform", rate=20000,
         backend="twolevel", strategy="per-slot"),
], ids=["full-random", "quarter-bytemap", "half-uniform"])
def test_migration_estimate_is_within_2x_of_the_real_peak(kw):
    code = ("kw = %r\n"
            "npages = kw['guest_size'] // 4096\n"
            "est = limits.migration_estimate(npages, 4, kw.get('backend', 'flat'),"
            " populate=kw['populate'], rate=kw['rate'], workload=kw['workload'],"
            " bandwidth=128 << 20, fill=kw.get('fill', 'version'), process=False)\n"
            "estimate = est.total\n"
            "kd.migrate(bandwidth=128 << 20, **kw)" % (kw,))
    r = _peak_rss_growth(code)
    ratio = r["estimate"] / r["growth"]
    assert 0.5 <= ratio <= 2.0, r


def test_compare_estimate_is_within_2x_of_the_real_peak():
    code = ("from pykvmdirty.analysis import compare as cmp\n"
            "s = cmp.Scenario(sizes_gib=[256], layout='many', slot_gib=64, "
            "backends=['bytemap'], dirty=[0, 1000], repeats=1)\n"
            "estimate = cmp.memory_estimate(s)[0].total\n"
            "cmp.run_compare(s)")
    r = _peak_rss_growth(code)
    assert 0.5 <= r["estimate"] / r["growth"] <= 2.0, r


def test_receiver_claim_estimate_counts_memory_and_hashes():
    est = limits.receiver_claim_estimate(1 << 40)
    assert (1 << 40) < est.total < (1 << 40) * 1.01
    assert "page hashes" in est.describe()


def test_hier_geometry_matches_the_c_header():
    """limits prices the hier log from its geometry; the C header is the
    truth (csrc/emu/hier_log.h is internal, not in the cffi interface)."""
    import pathlib
    import re
    header = (pathlib.Path(__file__).resolve().parent.parent / "csrc" / "emu" /
              "hier_log.h").read_text()

    def define(name):
        return int(re.search(r"#define %s (\d+)u" % name, header).group(1))
    assert limits.HIER_GROUP_PAGES == define("KD_HIER_GROUP_CHUNKS") * kd.CHUNK_PAGES
    assert limits.HIER_BLOCK_BYTES == limits.HIER_GROUP_PAGES // 8
    assert limits.HIER_RETIRE_SLACK == define("KD_HIER_RETIRE_SLACK")
    assert limits.HIER_RETIRE_BATCH == define("KD_HIER_RETIRE_BATCH")
