"""Where the migration stream goes.

A sink receives the sealed batches of the wire format (csrc/migrate/
wire_encode.c) and, at the end, says what the destination holds as one
64-bit hash per page (or, with the content-free page model, its version
arrays), so the controller can verify it page by page against the source.

- :class:`NullSink` counts only (the sender does not even encode);
- :class:`LocalSink` decodes in-process into destination memory;
- :class:`TcpSink` streams to a :class:`Receiver` (``pykvmdirty receive``),
  which rebuilds memory, then reports its page hashes back on the same
  connection.

What else travels on the connection (the optional shared-secret handshake,
the receiver's report) is in tcp_protocol.py.
"""
import socket
from typing import Optional

import numpy as np

from ..bindings.constants import PAGE_SIZE
from ..bindings.wire import WireDest
from ..errors import SinkError
from . import tcp_protocol
from .tcp_protocol import REPORT_MAGIC  # noqa: F401 (re-exported)


class DestinationResult:
    """What a destination holds: regions [(gpa, size)], hashes per page (in
    region order) or, content-free, one version array per region
    (``versions``, hashes None), and decoder statistics."""

    def __init__(self, regions, hashes, stats, ok=True, error=None, versions=None):
        self.regions = regions
        self.hashes = hashes
        self.versions = versions
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


class LocalSink:
    """In-process destination: batches are decoded into destination memory
    (page_model "versions": into a version per page)."""
    encodes = True
    name = "local"

    def __init__(self, page_model="contents"):
        self.dest = WireDest(page_model=page_model)

    def open(self, gpas, sizes):
        pass

    def send(self, view):
        used = self.dest.feed(view)
        if used != len(view):
            raise SinkError("destination left %d bytes of a batch unapplied"
                            % (len(view) - used))

    def finish(self):
        self.dest.finish(0)
        if self.dest.page_model == "versions":
            regions = self.dest.regions()
            return DestinationResult(regions, None, self.dest.stats(),
                                     versions=[self.dest.memory(i) for i in range(len(regions))])
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


class TcpSink:
    """Streams batches to a Receiver over TCP and reads its report."""
    encodes = True
    name = "tcp"

    def __init__(self, address, timeout=60.0, secret=None):
        self.host, self.port = parse_address(address, "TCP sink address")
        self.timeout = timeout
        self.secret = tcp_protocol.check_secret(secret)
        self.sock: Optional[socket.socket] = None
        self.sent = 0
        self.regions = []

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
        self.regions = [(int(g), int(s)) for g, s in zip(gpas, sizes)]
        if self.secret is not None:
            try:
                tcp_protocol.answer_challenge(self.sock, self.secret, self._where())
            except OSError as e:
                raise SinkError("%s: connection failed during authentication (%s)"
                                % (self._where(), e.strerror or e)) from None

    def _socket(self):
        if self.sock is None:
            raise SinkError("%s: not connected (open() first)" % self._where())
        return self.sock

    def send(self, view):
        try:
            self._socket().sendall(view)
        except OSError as e:
            raise SinkError("%s closed the connection after %d bytes of the stream (%s)"
                            % (self._where(), self.sent, e.strerror or e)) from None
        self.sent += len(view)

    def finish(self):
        """Read the receiver's report: raises SinkError if it failed or vanished."""
        try:
            self._socket().shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            line, rest = tcp_protocol.recv_line(self._socket(), tcp_protocol.MAX_LINE,
                                                "%s's report line" % self._where())
            regions, stats = tcp_protocol.parse_report(line, self.regions, self._where(),
                                                       self.sent)
            # exactly the hashes of the pages this sender announced, no more
            npages = sum(size for _, size in regions) // PAGE_SIZE
            hashes = np.empty(npages, dtype="<u8")
            view = hashes.data.cast("B")
            got = min(len(rest), len(view))
            view[:got] = rest[:got]
            while got < len(view):
                n = self._socket().recv_into(view[got:])
                if not n:
                    raise SinkError("%s report cut short: %d of %d hash bytes"
                                    % (self._where(), got, len(view)))
                got += n
        except OSError as e:
            raise SinkError("%s: connection failed while reading its report (%s)"
                            % (self._where(), e.strerror or e)) from None
        finally:
            self.close()
        return DestinationResult(regions, hashes.astype(np.uint64, copy=False), stats)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
