"""The wire destination (kd_wire_dest, csrc/wire.c): feed migration-stream
bytes, get guest memory and per-page hashes back; and page hashing of any
buffer. Numpy views of destination memory keep the destination alive."""
import errno
from typing import Any, List, Tuple

import numpy as np

from .._native import ffi, lib
from ..errors import WireError, check
from .boundary import byte_ptr, u64_ptr, uint_arg, view
from .constants import PAGE_SIZE

DEST_STAT_FIELDS = tuple(
    name for name, _ in ffi.typeof("struct kd_wire_dest_stats").fields if name != "reserved")


class WireDest:
    """kd_wire_dest wrapper: feed bytes, get memory views and hashes."""

    def __init__(self, prefault=0):
        out = ffi.new("kd_wire_dest **")
        check(lib.kd_wire_dest_create(out), "kd_wire_dest_create")
        self._h = ffi.gc(out[0], lib.kd_wire_dest_destroy)
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
        """Region index's memory as a uint8 numpy view (keeps the destination alive)."""
        regions = self._regions()
        if not 0 <= index < len(regions):
            raise IndexError("region index %r out of range (%d regions)" % (index, len(regions)))
        _, size, mem = regions[index]
        return view(self._h, mem, size, np.uint8)

    def hashes(self):
        """([(gpa, size)], uint64 hash of every page in region order)."""
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
