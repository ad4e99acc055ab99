"""The wire destination (kd_wire_dest, csrc/migrate/wire_dest.c): feed
migration-stream bytes, get guest memory and per-page hashes back (or, with
the content-free page model, per-page versions); page hashing of any buffer,
and the comparison of two version arrays. Numpy views of destination memory
keep the destination alive."""
import errno
from typing import Any, List, Tuple

import numpy as np

from .._native import ffi, lib
from ..errors import WireError, check
from .boundary import byte_ptr, u64_ptr, uint_arg, view
from .constants import PAGE_MODELS, PAGE_SIZE

DEST_STAT_FIELDS = tuple(
    name for name, _ in ffi.typeof("struct kd_wire_dest_stats").fields if name != "reserved")


class WireDest:
    """kd_wire_dest wrapper: feed bytes, get memory views and hashes."""

    def __init__(self, prefault=0, page_model="contents"):
        if page_model not in PAGE_MODELS:
            raise ValueError("unknown page_model %r; choose from %s"
                             % (page_model, ", ".join(PAGE_MODELS)))
        out = ffi.new("kd_wire_dest **")
        check(lib.kd_wire_dest_create(out), "kd_wire_dest_create")
        self._h = ffi.gc(out[0], lib.kd_wire_dest_destroy)
        #: "contents": regions of 4 KiB pages; "versions": a uint64 per page
        self.page_model = page_model
        if page_model == "versions":
            check(lib.kd_wire_dest_set_page_versions(self._h, 1),
                  "kd_wire_dest_set_page_versions")
        if prefault:
            prefault = uint_arg(prefault, "prefault")
            check(lib.kd_wire_dest_set_prefault(self._h, prefault),
                  "kd_wire_dest_set_prefault(%d)" % prefault)
        self.eos = False

    def error(self):
        e = lib.kd_wire_dest_error(self._h)
        return ffi.string(e).decode() if e != ffi.NULL else None

    def feed(self, data):
        """Apply complete batches of data; returns bytes consumed. Raises
        WireError if the stream is corrupt."""
        consumed = ffi.new("uint64_t *")
        rc = lib.kd_wire_dest_feed(self._h, byte_ptr(data), len(data), consumed)
        if rc < 0:
            raise WireError("destination rejected the stream: %s" % (self.error() or rc))
        if rc == 1:
            self.eos = True
        return consumed[0]

    def peek_mem_size(self, batch):
        """The guest size the stream claims in this batch (the next whole
        batch, not yet fed), read by the decoder before it maps anything:
        (total bytes, regions) when the batch opens with a MEM_SIZE record
        feed would accept, None when it carries no claim. Raises WireError,
        as feed would, if the batch or the record is corrupt (the error is
        the stream's, sticky), or if batch is not a whole batch."""
        total = ffi.new("uint64_t *")
        nregions = ffi.new("uint32_t *")
        rc = lib.kd_wire_dest_peek_mem_size(self._h, byte_ptr(batch), len(batch), total,
                                            nregions)
        if rc == -errno.EAGAIN:
            raise WireError("peek_mem_size needs a whole batch, got %d bytes" % len(batch))
        if rc < 0:
            raise WireError("destination rejected the stream: %s" % (self.error() or rc))
        return (total[0], nregions[0]) if rc == 1 else None

    def need(self, data):
        """Bytes of the batch starting at data (header + payload). Raises
        WireError if the header is invalid."""
        n = lib.kd_wire_dest_need(self._h, byte_ptr(data), len(data))
        if n < 0:
            raise WireError("destination rejected a batch header: %s"
                            % (self.error() or "errno %d" % -n))
        return n

    def finish(self, leftover=0):
        rc = lib.kd_wire_dest_finish(self._h, uint_arg(leftover, "leftover"))
        if rc < 0:
            raise WireError("destination: %s" % (self.error() or rc))

    def stats(self):
        st = ffi.new("struct kd_wire_dest_stats *")
        check(lib.kd_wire_dest_stats(self._h, st), "kd_wire_dest_stats")
        return {k: getattr(st, k) for k in DEST_STAT_FIELDS}

    def _regions(self):
        """[(gpa, size, void *memory)] of every region, in index order."""
        out: List[Tuple[int, int, Any]] = []
        gpa = ffi.new("uint64_t *")
        size = ffi.new("uint64_t *")
        mem = ffi.new("void **")
        i = 0
        while True:
            rc = lib.kd_wire_dest_region(self._h, i, gpa, size, mem)
            if rc == -errno.ENOENT:
                return out
            check(rc, "kd_wire_dest_region(%d)" % i)
            out.append((gpa[0], size[0], mem[0]))
            i += 1

    def regions(self):
        """[(gpa, size)] of every region, in index order."""
        return [(g, s) for g, s, _ in self._regions()]

    def memory(self, index):
        """Region index's memory as a numpy view (keeps the destination
        alive): uint8 bytes, or with page versions a uint64 per page."""
        regions = self._regions()
        if not 0 <= index < len(regions):
            raise IndexError("region index %r out of range (%d regions)" % (index, len(regions)))
        _, size, mem = regions[index]
        if self.page_model == "versions":
            return view(self._h, mem, size // PAGE_SIZE, np.uint64)
        return view(self._h, mem, size, np.uint8)

    def hashes(self):
        """([(gpa, size)], uint64 hash of every page in region order).
        Contents only: a destination of versions compares its versions."""
        if self.page_model == "versions":
            raise ValueError("a destination of page versions has no page contents to hash; "
                             "compare memory(i) with versions_diff")
        regs = self._regions()
        total = sum(size for _, size, _ in regs) // PAGE_SIZE
        out = np.empty(total, dtype=np.uint64)
        at = 0
        for _, size, mem in regs:
            n = size // PAGE_SIZE
            check(lib.kd_page_hashes(mem, n, u64_ptr(out[at:at + n], True)), "kd_page_hashes")
            at += n
        return [(g, s) for g, s, _ in regs], out


def page_hashes(memory):
    """64-bit hash of every page of a uint8 buffer (numpy array or memory view)."""
    mem = np.ascontiguousarray(memory)
    n = mem.size // PAGE_SIZE
    out = np.empty(n, dtype=np.uint64)
    check(lib.kd_page_hashes(byte_ptr(mem), n, u64_ptr(out, True)), "kd_page_hashes")
    return out


def versions_diff(a, b, cap=16):
    """(number of differing entries, the first min(that, cap) indices) of
    two uint64 version arrays of one length (content-free page model:
    source slot and destination region). Blocks that neither side ever
    touched are skipped unread (kd_versions_diff)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint64 or b.dtype != np.uint64:
        raise TypeError("versions_diff compares uint64 arrays, got %s and %s" % (a.dtype, b.dtype))
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("versions_diff needs two 1-D arrays of one length, got %s and %s"
                         % (a.shape, b.shape))
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        raise ValueError("versions_diff needs contiguous arrays")
    cap = uint_arg(cap, "cap", 32)
    first = np.zeros(cap, dtype=np.uint64)
    n = lib.kd_versions_diff(u64_ptr(a), u64_ptr(b), a.size, u64_ptr(first, True), cap)
    check(n, "kd_versions_diff")
    return int(n), [int(x) for x in first[:min(int(n), cap)]]
