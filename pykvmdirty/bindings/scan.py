"""Bitmap scanning in C (kd_bitmap_to_gfns, word-at-a-time ctz): the set bits
of a KVM-layout dirty bitmap as gfns, without a per-page Python loop."""
import numpy as np

from .._native import lib
from ..errors import check
from .boundary import u64_ptr, uint_arg


def bitmap_to_gfns(bitmap, npages, base=0, out=None):
    """gfns (base + index) of the set bits among the first npages bits of a
    uint64 bitmap, ascending. out: an optional uint64 buffer of >= npages
    entries to fill (the result is then a view of it)."""
    bitmap = np.ascontiguousarray(bitmap, dtype=np.uint64)
    npages = uint_arg(npages, "npages")
    if bitmap.size * 64 < npages:
        raise ValueError("bitmap has %d words, %d pages need %d"
                         % (bitmap.size, npages, (npages + 63) // 64))
    if out is None:
        out = np.empty(max(npages, 1), dtype=np.uint64)
    n = check(lib.kd_bitmap_to_gfns(u64_ptr(bitmap), npages, uint_arg(base, "base"),
                                    u64_ptr(out, True), out.size), "kd_bitmap_to_gfns")
    if n > out.size:
        raise ValueError("bitmap has %d set bits, out holds %d" % (n, out.size))
    return out[:n]
