"""The C workload generators (kd_workload): seeded streams of gfns for the
kinds idle, uniform, hotspot, zipf, sequential and migration-test."""
import numbers

import numpy as np

from .._native import ffi, lib
from ..errors import check
from .vm import _u64_ptr

KINDS = {
    "idle": lib.KD_WL_IDLE,
    "uniform": lib.KD_WL_UNIFORM,
    "hotspot": lib.KD_WL_HOTSPOT,
    "zipf": lib.KD_WL_ZIPF,
    "sequential": lib.KD_WL_SEQUENTIAL,
    "migration-test": lib.KD_WL_MIGRATION_TEST,
}


def check_kind(kind):
    if kind not in KINDS:
        raise ValueError("unknown workload %r; choose from %s" % (kind, ", ".join(KINDS)))


def check_fraction(value, name, lo_open=False):
    if not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    ok = (0 < value <= 1) if lo_open else (0 <= value <= 1)
    if not ok:
        raise ValueError("%s must be in %s, got %r" % (name, "(0, 1]" if lo_open else "[0, 1]",
                                                       value))
    return float(value)


def check_shape(hot_fraction, hot_share, zipf_s):
    """The distribution parameters, checked: (hot_fraction, hot_share, zipf_s)."""
    hot_fraction = check_fraction(hot_fraction, "hot_fraction", lo_open=True)
    hot_share = check_fraction(hot_share, "hot_share")
    if not isinstance(zipf_s, numbers.Real) or not 0 < zipf_s <= 10:
        raise ValueError("zipf_s must be in (0, 10], got %r" % (zipf_s,))
    return hot_fraction, hot_share, float(zipf_s)

class Generator:
    """One seeded C generator over gfns [first_gfn, first_gfn + npages)."""

    def __init__(self, kind, first_gfn, npages, seed=0, hot_fraction=0.05, hot_share=0.9,
                 zipf_s=1.0):
        check_kind(kind)
        cfg = ffi.new("struct kd_workload_config *")
        cfg.kind = KINDS[kind]
        cfg.seed = int(seed) & (2**64 - 1)
        cfg.first_gfn = int(first_gfn)
        cfg.npages = int(npages)
        cfg.hot_fraction, cfg.hot_share, cfg.zipf_s = check_shape(hot_fraction, hot_share,
                                                                   zipf_s)
        if kind != "idle" and npages <= 0:
            raise ValueError("a %s workload needs pages, got npages=%d" % (kind, npages))
        out = ffi.new("kd_workload **")
        check(lib.kd_workload_create(cfg, out), "workload(%s)" % kind)
        self._h = ffi.gc(out[0], lib.kd_workload_destroy)
        self.kind = kind
        self._hint = ffi.new("uint64_t *")

    @property
    def handle(self):
        return self._h

    def generate(self, n, out=None):
        """Up to n next gfns (fewer at the end of a sweep) and the value hint
        (the sweep number for migration-test, else 0)."""
        if out is None:
            out = np.empty(max(int(n), 1), dtype=np.uint64)
        k = check(lib.kd_workload_generate(self._h, _u64_ptr(out), int(n), self._hint),
                  "workload.generate")
        return out[:k], self._hint[0]
