"""Whole-RAM snapshots of a stopped guest (QMP ``pmemsave``) and their page diffs.

A snapshot is guest physical memory [0, size) written by QEMU to a file
(under /dev/shm where it exists: memory, not disk) and mapped read-only;
:func:`changed_pages` compares two of them page by page in chunks, so a
1 GiB guest is compared without holding both in Python memory.
"""
import asyncio
import os
import tempfile
import time

import numpy as np

from ..layout import PAGE

CHUNK_PAGES = 8192          # 32 MiB per comparison step
WORDS = PAGE // 8


def snapshot_dir():
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else tempfile.gettempdir()


async def save(vm, size, path):
    """RAM [0, size) of the (stopped) guest in `vm` into `path`."""
    await vm.cmd("pmemsave", during="saving guest memory", timeout=120.0, val=0, size=size,
                 filename=path)
    got = os.path.getsize(path)
    if got != size:
        from ..errors import QemuError
        raise QemuError("%s QEMU: pmemsave wrote %d bytes, expected %d" % (vm.role, got, size))


async def run_window(vm, window_s):
    """Let the stopped guest run for window_s, stop it again; returns how long
    it ran (s): the middle of the cont call to the middle of the stop call."""
    a = time.monotonic()
    await vm.cmd("cont")
    b = time.monotonic()
    await asyncio.sleep(window_s)
    c = time.monotonic()
    await vm.cmd("stop")
    e = time.monotonic()
    return ((c + e) - (a + b)) / 2


def pages(path):
    """The snapshot as a read-only (npages, 512) uint64 view of the file."""
    n = os.path.getsize(path) // PAGE
    return np.memmap(path, dtype=np.uint64, mode="r", shape=(n, WORDS))


def changed_pages(a, b):
    """gfns (uint64) whose contents differ between two snapshots of one size."""
    if a.shape != b.shape:
        raise ValueError("snapshots of different sizes: %d and %d pages"
                         % (a.shape[0], b.shape[0]))
    out = []
    for lo in range(0, a.shape[0], CHUNK_PAGES):
        hi = min(a.shape[0], lo + CHUNK_PAGES)
        diff = np.any(a[lo:hi] != b[lo:hi], axis=1)
        out.append(np.flatnonzero(diff).astype(np.uint64) + np.uint64(lo))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def nonzero_pages(a):
    """gfns (uint64) holding anything but zeros."""
    out = []
    for lo in range(0, a.shape[0], CHUNK_PAGES):
        hi = min(a.shape[0], lo + CHUNK_PAGES)
        out.append(np.flatnonzero(np.any(a[lo:hi] != 0, axis=1)).astype(np.uint64)
                   + np.uint64(lo))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def zero_pages(a, gfns):
    """How many of gfns hold only zeros in snapshot a."""
    if gfns.size == 0:
        return 0
    return int(np.count_nonzero(~np.any(a[gfns.astype(np.int64)] != 0, axis=1)))
