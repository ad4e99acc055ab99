"""The wire destination (kd_wire_dest): feed migration-stream bytes, get
guest memory and per-page hashes back; and page hashing of any buffer."""
import numpy as np

from .._native import ffi, lib
from ..errors import WireError, check

PAGE_SIZE = lib.KD_PAGE_SIZE

class WireDest:
    """kd_wire_dest wrapper: feed bytes, get hashes."""

    def __init__(self, prefault=0):
        out = ffi.new("kd_wire_dest **")
        check(lib.kd_wire_dest_create(out), "kd_wire_dest_create")
        self._h = ffi.gc(out[0], lib.kd_wire_dest_destroy)
        if prefault:
            check(lib.kd_wire_dest_set_prefault(self._h, int(prefault)),
                  "kd_wire_dest_set_prefault(%d)" % prefault)
        self._consumed = ffi.new("uint64_t *")
        self.eos = False

    def error(self):
        e = lib.kd_wire_dest_error(self._h)
        return ffi.string(e).decode() if e != ffi.NULL else None

    def feed(self, view):
        """Apply complete batches of view; returns bytes consumed. Raises
        WireError if the stream is corrupt."""
        buf = ffi.from_buffer(view)
        rc = lib.kd_wire_dest_feed(self._h, buf, len(view), self._consumed)
        if rc < 0:
            raise WireError("destination rejected the stream: %s" % (self.error() or rc))
        if rc == 1:
            self.eos = True
        return self._consumed[0]

    def need(self, view):
        return lib.kd_wire_dest_need(self._h, ffi.from_buffer(view), len(view))

    def finish(self, leftover=0):
        rc = lib.kd_wire_dest_finish(self._h, leftover)
        if rc < 0:
            raise WireError("destination: %s" % (self.error() or rc))

    def stats(self):
        st = ffi.new("struct kd_wire_dest_stats *")
        check(lib.kd_wire_dest_stats(self._h, st), "kd_wire_dest_stats")
        return {k: getattr(st, k) for k in ("batches", "records", "pages", "zero_pages",
                                             "bytes", "regions", "guest_bytes", "eos",
                                             "prefaulted")}

    def regions(self):
        out = []
        gpa = ffi.new("uint64_t *")
        size = ffi.new("uint64_t *")
        mem = ffi.new("void **")
        i = 0
        while lib.kd_wire_dest_region(self._h, i, gpa, size, mem) == 0:
            out.append((gpa[0], size[0], mem[0]))
            i += 1
        return out

    def memory(self, index):
        """Region index's memory as a uint8 numpy view."""
        gpa, size, mem = self.regions()[index]
        return np.frombuffer(ffi.buffer(mem, size), dtype=np.uint8)

    def hashes(self):
        regs = self.regions()
        total = sum(size for _, size, _ in regs) // PAGE_SIZE
        out = np.empty(total, dtype=np.uint64)
        at = 0
        for _, size, mem in regs:
            n = size // PAGE_SIZE
            check(lib.kd_page_hashes(mem, n, ffi.from_buffer("uint64_t[]", out[at:at + n])),
                  "kd_page_hashes")
            at += n
        return [(g, s) for g, s, _ in regs], out


def page_hashes(memory):
    """64-bit hash of every page of a uint8 buffer (numpy array or memory view)."""
    mem = np.asarray(memory)
    n = mem.size // PAGE_SIZE
    out = np.empty(n, dtype=np.uint64)
    check(lib.kd_page_hashes(ffi.from_buffer(mem), n, ffi.from_buffer("uint64_t[]", out)),
          "kd_page_hashes")
    return out
