"""Crossing the cffi boundary: Python arguments checked and converted for C
(integers in range, gfn arrays as contiguous uint64), pointers into numpy
arrays, and numpy views of C memory that keep their C owner alive.

Invariant of every view made here: the numpy array's ``base`` chain ends at a
:class:`CMemory` object that holds a strong reference to the owner of the C
memory (whose finalizer frees it), so the memory outlives every view."""
import operator

import numpy as np

from .._native import ffi


def uint_arg(value, name, bits=64):
    """value as a Python int in [0, 2**bits); TypeError/ValueError name it."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError("%s must be an integer, got %r" % (name, value)) from None
    if v < 0 or v >> bits:
        raise ValueError("%s must be in [0, 2**%d), got %d" % (name, bits, v))
    return v


def as_gfn_array(gfns, name="gfns"):
    """gfns as a C-contiguous uint64 array (no copy if it already is one)."""
    if isinstance(gfns, np.ndarray):
        arr = gfns
    elif np.isscalar(gfns) or isinstance(gfns, int):
        arr = np.array([uint_arg(gfns, name)], dtype=np.uint64)
    else:
        arr = np.asarray(gfns)
        if arr.size == 0:
            arr = arr.astype(np.uint64)
    if arr.ndim != 1:
        raise ValueError("%s must be one-dimensional, got shape %s" % (name, arr.shape))
    if arr.dtype != np.uint64:
        if arr.dtype.kind not in "iu":
            raise TypeError("%s must hold integers, got dtype %s" % (name, arr.dtype))
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError("%s must be non-negative, got %d" % (name, int(arr.min())))
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def u64_ptr(arr, writable=False):
    """uint64_t * into a C-contiguous uint64 numpy array (valid while arr lives)."""
    return ffi.from_buffer("uint64_t[]", arr, require_writable=writable)


def byte_ptr(buf, writable=False):
    """char * into any contiguous buffer (valid while buf lives)."""
    return ffi.from_buffer(buf, require_writable=writable)


class CMemory:
    """C memory exposed to numpy through the array interface; ``owner`` (kept
    alive by this object, hence by every view) frees the memory when it dies."""

    def __init__(self, owner, ptr, shape, dtype, readonly=False):
        self.owner = owner
        dtype = np.dtype(dtype)
        self.__array_interface__ = {
            "version": 3,
            "shape": (int(shape),),
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (int(ffi.cast("uintptr_t", ptr)), bool(readonly)),
        }


def view(owner, ptr, count, dtype, readonly=False):
    """A numpy array of `count` `dtype` items at ptr, keeping owner alive."""
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.asarray(CMemory(owner, ptr, count, dtype, readonly))


def owner_of(array):
    """The CMemory at the end of array's base chain, or None."""
    while array is not None:
        if isinstance(array, CMemory):
            return array
        array = getattr(array, "base", None)
    return None
