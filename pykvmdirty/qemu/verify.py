"""Checks of a migrated guest: the destination's memory against the source's,
and QEMU migration-test's a-b invariant.

The a-b guest increments the first byte of each page of [start, end) in
order, sweep after sweep, so a stopped guest's pages read v+1 up to the page
it was about to write and v from there on: walking the pages, each first
byte equals the previous one except at most one "edge" where it is one less
(mod 256).  Both sides are stopped when they are read (source: postmigrate,
destination: paused by -S), so every byte must also equal the source's.
Vectorised with numpy: no per-page Python loop.
"""
from dataclasses import dataclass

import numpy as np

from .layout import PAGE


@dataclass(frozen=True)
class AbCheck:
    ok: bool
    edge_page: int      # index of the first page of the v part (-1: no edge)
    bad_pages: int      # pages that break the invariant


def ab_invariant(first_bytes):
    """Check the a-b invariant on the first bytes of consecutive pages."""
    b = np.asarray(first_bytes, dtype=np.uint8)
    if b.size < 2:
        return AbCheck(True, -1, 0)
    step = (b[:-1].astype(np.int16) - b[1:].astype(np.int16)) % 256   # previous - this
    edges = np.flatnonzero(step == 1)
    bad = int(np.count_nonzero((step != 0) & (step != 1))) + max(0, edges.size - 1)
    return AbCheck(bad == 0, int(edges[0]) + 1 if edges.size else -1, bad)


def first_bytes(data):
    """The first byte of each 4 KiB page of data."""
    a = np.frombuffer(data, dtype=np.uint8)
    return a[: a.size - a.size % PAGE : PAGE]


def differing_pages(src, dst):
    """Indices of the 4 KiB pages whose bytes differ between src and dst."""
    if len(src) != len(dst):
        raise ValueError("src and dst differ in length: %d != %d" % (len(src), len(dst)))
    a = np.frombuffer(src, dtype=np.uint64).reshape(-1, PAGE // 8)
    b = np.frombuffer(dst, dtype=np.uint64).reshape(-1, PAGE // 8)
    return np.flatnonzero((a != b).any(axis=1))


def draws_match(first, workload, npages, seed, hot_fraction, hot_share, pages_written, batch):
    """Whether a uniform or hotspot guest wrote the emulator's pages: its range's
    first bytes (each write increments a page's first byte) against the counts
    of the first `pages_written` draws of the emulator's generator for the same
    workload (vCPU 0's seed). The guest counts a batch after writing it, so up
    to `batch` pages may be one ahead. Returns (ok, pages that differ)."""
    from ..bindings.workload import Generator
    from ..migration.workloads import vcpu_seed
    gen = Generator(workload, 0, npages, seed=vcpu_seed(seed, 0), hot_fraction=hot_fraction,
                    hot_share=hot_share)
    counts = np.zeros(npages, dtype=np.int64)
    buf = np.empty(1 << 16, dtype=np.uint64)
    left = int(pages_written)
    while left:
        gfns, _ = gen.generate(min(left, buf.size), buf)
        if not gfns.size:
            break
        counts += np.bincount(gfns.astype(np.int64), minlength=npages)
        left -= gfns.size
    ahead = (np.asarray(first, dtype=np.int64) - counts) % 256
    bad = int(np.count_nonzero(ahead))
    return bad <= batch and bool(np.all(ahead <= 1)), bad
