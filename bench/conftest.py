"""pytest-benchmark suites for pykvmdirty.

Run: ``pytest bench/ --benchmark-only`` (bench/pytest.ini makes pytest collect
bench_*.py). ``--benchmark-json FILE`` output works with pytest-benchmark's
compare tools (``pytest-benchmark compare``). Guest sizes default to 1, 64 and
512 GiB; ``PYKVMDIRTY_BENCH_SIZES=1,64`` trims them and
``PYKVMDIRTY_BENCH_ROUNDS=N`` sets the rounds. Helpers: benchutil.py.

Suites: bench_scan.py (scan strategies vs guest size and dirty density, with
the numpy flatnonzero and plain-read baselines), bench_polling.py (per-slot
polling vs global sync), bench_marking.py (write throughput, 1 and 2 writer
threads), bench_ring.py (harvest and reset per entry).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchutil


def pytest_configure(config):
    # collected even if pytest was started with another ini file
    config.addinivalue_line("python_files", "bench_*.py")
