"""Hashes of sampled guest pages (kd_sample_page_crc32c): the page-sampling
dirty-rate method hashes a few pages of each memory slot, then hashes them
again after the measuring period. One C call per slot, no per-page loop."""
import numpy as np

from .._native import ffi, lib
from ..errors import check
from .boundary import as_gfn_array, u64_ptr


def sample_page_crc32c(vm, slot, pages):
    """CRC32C of each page `pages` (slot-relative page indices) of the slot's
    guest memory, as uint32. ValueError if an index is past the slot's end or
    the slot has no guest memory."""
    pages = as_gfn_array(pages, "pages")
    out = np.empty(pages.size, dtype=np.uint32)
    holder = _Pin()
    memory, npages = vm.pin_slot_memory(slot, holder)
    if pages.size and int(pages.max()) >= npages:
        raise ValueError("pages must be below the slot's %d pages, got %d"
                         % (npages, int(pages.max())))
    if pages.size:
        check(lib.kd_sample_page_crc32c(memory, npages, u64_ptr(pages), pages.size,
                                        ffi.from_buffer("uint32_t[]", out,
                                                        require_writable=True)),
              "sample_page_crc32c(slot=%#x, %d pages)" % (slot, pages.size))
    del holder
    return out


class _Pin:
    """Holds the slot (no deletion) for the duration of one hashing call."""
    __slots__ = ("__weakref__",)
