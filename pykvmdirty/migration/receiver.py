"""The TCP receiver (``pykvmdirty receive``): accepts a migration stream,
rebuilds guest memory with the wire destination, reports page hashes back."""
import json
import socket
import time

from ..bindings.constants import WIRE_BATCH_HEADER
from ..bindings.wire import WireDest
from .sinks import PAGE_SIZE, REPORT_MAGIC, SinkError, parse_address


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
        dest = WireDest(self.prefault)
        error = None
        hdr_size = WIRE_BATCH_HEADER
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
