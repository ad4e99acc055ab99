"""Where the migration stream goes.

A sink receives the sealed batches of the wire format (csrc/wire.c) and, at
the end, says what the destination holds as one 64-bit hash per page, so the
controller can verify it page by page against the source.

- :class:`NullSink` counts only (the sender does not even encode);
- :class:`LocalSink` decodes in-process into destination memory;
- :class:`TcpSink` streams to a :class:`Receiver` (``pykvmdirty receive``),
  which rebuilds memory, then reports its page hashes back on the same
  connection.

Receiver report (after the stream): the line ``KDRPT1 <json>\\n``, then, if
the json says ok, the little-endian uint64 page hashes of every region in
address order.
"""
import json
import socket
import time

import numpy as np

from ._native import ffi, lib
from .errors import check

PAGE_SIZE = lib.KD_PAGE_SIZE
REPORT_MAGIC = b"KDRPT1 "


class SinkError(RuntimeError):
    """The destination failed: connection lost, stream rejected, bad report."""


class DestinationResult:
    """What a destination holds: regions [(gpa, size)], hashes per page (in
    region order) and decoder statistics."""

    def __init__(self, regions, hashes, stats, ok=True, error=None):
        self.regions = regions
        self.hashes = hashes
        self.stats = stats
        self.ok = ok
        self.error = error


class NullSink:
    """Counts only: nothing is encoded, nothing verified."""
    encodes = False
    name = "null"

    def open(self, gpas, sizes):
        pass

    def send(self, view):
        raise AssertionError("NullSink receives no batches")

    def finish(self):
        return None

    def close(self):
        pass


class _Dest:
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
        SinkError if the stream is corrupt."""
        buf = ffi.from_buffer(view)
        rc = lib.kd_wire_dest_feed(self._h, buf, len(view), self._consumed)
        if rc < 0:
            raise SinkError("destination rejected the stream: %s" % (self.error() or rc))
        if rc == 1:
            self.eos = True
        return self._consumed[0]

    def need(self, view):
        return lib.kd_wire_dest_need(self._h, ffi.from_buffer(view), len(view))

    def finish(self, leftover=0):
        rc = lib.kd_wire_dest_finish(self._h, leftover)
        if rc < 0:
            raise SinkError("destination: %s" % (self.error() or rc))

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


class LocalSink:
    """In-process destination: batches are decoded into destination memory."""
    encodes = True
    name = "local"

    def __init__(self):
        self.dest = _Dest()

    def open(self, gpas, sizes):
        pass

    def send(self, view):
        used = self.dest.feed(view)
        if used != len(view):
            raise SinkError("destination left %d bytes of a batch unapplied"
                            % (len(view) - used))

    def finish(self):
        self.dest.finish(0)
        regions, hashes = self.dest.hashes()
        return DestinationResult(regions, hashes, self.dest.stats())

    def close(self):
        pass


def parse_address(addr, what="address"):
    """'host:port' or (host, port) -> (host, port)."""
    if isinstance(addr, tuple):
        host, port = addr
    else:
        if not isinstance(addr, str) or ":" not in addr:
            raise ValueError("%s must be HOST:PORT, got %r" % (what, addr))
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError("%s has a bad port %r" % (what, port)) from None
    if not 0 <= port <= 65535:
        raise ValueError("%s port must be in [0, 65535], got %d" % (what, port))
    return host, port


def _recv_line(sock, limit=1 << 20):
    """(line including its newline, bytes received after it); line b'' at EOF."""
    data = bytearray()
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data), b""
        data += chunk
        if len(data) > limit:
            raise SinkError("receiver report line longer than %d bytes" % limit)
    i = data.index(b"\n") + 1
    return bytes(data[:i]), bytes(data[i:])


class TcpSink:
    """Streams batches to a Receiver over TCP and reads its report."""
    encodes = True
    name = "tcp"

    def __init__(self, address, timeout=60.0):
        self.host, self.port = parse_address(address, "TCP sink address")
        self.timeout = timeout
        self.sock = None
        self.sent = 0

    def _where(self):
        return "TCP receiver at %s:%d" % (self.host, self.port)

    def open(self, gpas, sizes):
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise SinkError("cannot connect to %s: %s" % (self._where(), e.strerror or e)) \
                from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:
            pass

    def send(self, view):
        try:
            self.sock.sendall(view)
        except OSError as e:
            raise SinkError("%s closed the connection after %d bytes of the stream (%s)"
                            % (self._where(), self.sent, e.strerror or e)) from None
        self.sent += len(view)

    def finish(self):
        """Read the receiver's report: raises SinkError if it failed or vanished."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            line, rest = _recv_line(self.sock)
            if not line.endswith(b"\n"):
                raise SinkError("%s closed the connection without a report after %d bytes "
                                "of the stream" % (self._where(), self.sent))
            if not line.startswith(REPORT_MAGIC):
                raise SinkError("%s sent a malformed report %r" % (self._where(), line[:60]))
            rep = json.loads(line[len(REPORT_MAGIC):])
            if not rep.get("ok"):
                raise SinkError("%s rejected the stream: %s" % (self._where(), rep.get("error")))
            npages = sum(size for _, size in rep["regions"]) // PAGE_SIZE
            hashes = np.empty(npages, dtype=np.uint64)
            view = memoryview(hashes).cast("B")
            got = min(len(rest), len(view))
            view[:got] = rest[:got]
            while got < len(view):
                n = self.sock.recv_into(view[got:])
                if not n:
                    raise SinkError("%s report cut short: %d of %d hash bytes"
                                    % (self._where(), got, len(view)))
                got += n
        except OSError as e:
            raise SinkError("%s: connection failed while reading its report (%s)"
                            % (self._where(), e.strerror or e)) from None
        finally:
            self.close()
        return DestinationResult([tuple(r) for r in rep["regions"]], hashes.astype("<u8"),
                                 rep.get("stats", {}))

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _recv_exact(conn, mv, start, end):
    """Fill mv[start:end] from conn; returns the end reached (short at EOF)."""
    at = start
    while at < end:
        n = conn.recv_into(mv[at:end])
        if not n:
            return at
        at += n
    return at


class ReceiveResult:
    def __init__(self, ok, error, stats, seconds, peer):
        self.ok = ok
        self.error = error
        self.stats = stats
        self.seconds = seconds
        self.peer = peer

    def as_dict(self):
        return dict(ok=self.ok, error=self.error, stats=self.stats, seconds=self.seconds,
                    peer=self.peer)


class Receiver:
    """Listens on (host, port) (port 0 picks one: see .port) and rebuilds guest
    memory from one migration stream per serve_one() call. prefault: bytes a
    helper thread populates ahead of dense writes (0 = off; see
    kd_wire_dest_set_prefault). Destination memory uses 2 MiB pages where the
    kernel allows."""

    def __init__(self, listen=("127.0.0.1", 0), timeout=None, prefault=0):
        host, port = parse_address(listen, "listen address")
        if isinstance(prefault, bool) or not isinstance(prefault, int) or prefault < 0 \
                or prefault % PAGE_SIZE:
            raise ValueError("prefault must be a non-negative multiple of %d bytes, got %r"
                             % (PAGE_SIZE, prefault))
        self.prefault = prefault
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.lsock.bind((host, port))
        except OSError as e:
            self.lsock.close()
            raise ValueError("cannot listen on %s:%d: %s" % (host, port, e.strerror or e)) \
                from None
        self.lsock.listen(1)
        self.host, self.port = self.lsock.getsockname()[:2]
        self.timeout = timeout
        self.dest = None

    def close(self):
        self.lsock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def serve_one(self, keep_memory=False):
        """Accept one sender, apply its stream, report back. Returns a ReceiveResult
        (ok False with the error if the stream was truncated or corrupt)."""
        conn, peer = self.lsock.accept()
        conn.settimeout(self.timeout)
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        t0 = time.perf_counter()
        dest = _Dest(self.prefault)
        error = None
        hdr_size = lib.KD_WIRE_BATCH_HEADER
        buf = bytearray(4 << 20)
        try:
            # read exactly one batch at a time: header, then its payload
            while not dest.eos:
                mv = memoryview(buf)
                got = _recv_exact(conn, mv, 0, hdr_size)
                if got < hdr_size:
                    dest.finish(got)  # raises: truncated
                if dest.feed(mv[:hdr_size]) == hdr_size:  # checks magic, length, seq
                    del mv
                    continue  # an empty batch
                need = dest.need(mv[:hdr_size])
                if need > len(buf):
                    grown = bytearray(need)
                    grown[:hdr_size] = mv[:hdr_size]
                    del mv
                    buf = grown
                    mv = memoryview(buf)
                got = _recv_exact(conn, mv, hdr_size, need)
                if got < need:
                    dest.finish(got)  # raises: truncated
                used = dest.feed(mv[:need])
                if used != need:
                    raise SinkError("batch %d was not applied" % dest.stats()["batches"])
                del mv
            extra = conn.recv(1)
            if extra:
                raise SinkError("data after the end-of-stream record")
        except SinkError as e:
            error = str(e)
        except OSError as e:
            error = "connection failed: %s" % (e.strerror or e)
        stats = dest.stats()
        seconds = time.perf_counter() - t0
        try:
            if error is None:
                regions, hashes = dest.hashes()
                rep = dict(ok=True, regions=regions, stats=stats)
                conn.sendall(REPORT_MAGIC + json.dumps(rep).encode() + b"\n")
                conn.sendall(memoryview(hashes.astype("<u8")).cast("B"))
            else:
                rep = dict(ok=False, error=error, stats=stats)
                conn.sendall(REPORT_MAGIC + json.dumps(rep).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()
        if keep_memory:
            self.dest = dest
        return ReceiveResult(error is None, error, stats, seconds, "%s:%d" % peer[:2])
