"""The TCP receiver (``pykvmdirty receive``): accepts migration streams,
rebuilds guest memory with the wire destination, reports page hashes back.

Everything a sender sends is untrusted; what it can make the receiver spend
is bounded:

- memory: a stream's MEM_SIZE record claims the guest size, read by the C
  decoder before it maps anything (kd_wire_dest_peek_mem_size); the claim,
  with the hashes the report will carry, is reserved from one budget shared by all
  connections (``max_memory``, default from the memory available: see
  pykvmdirty.limits) before any page is applied. A claim above what is left
  is refused at once, with the reason sent back. Batch buffers (up to the
  wire format's 64 MiB payload) are reserved from the same budget.
- time: ``idle_timeout`` without a byte, ``total_timeout`` per connection.
- connections: at most ``max_connections`` at once, each on its own thread (a
  quiet sender delays no one); one more is told "busy" and closed.
- the report: its size follows the reserved claim (8 bytes per page).

Every error of a connection — a corrupt stream, a timeout, a refused claim,
an authentication failure, even an unexpected exception — becomes that
connection's failed ReceiveResult and its report; the server keeps serving.
With a shared ``secret``, a sender must answer an HMAC challenge
(tcp_protocol.py) before anything it sends is decoded: the whole response
within ``idle_timeout`` of the challenge (a byte at a time does not extend
it), answered with AUTH_OK or the error report, so a refused sender reads the
reason instead of a broken pipe.
"""
import socket
import sys
import threading
import time

from .. import limits
from ..bindings.constants import WIRE_BATCH_HEADER
from ..bindings.wire import WireDest
from ..errors import SinkError
from . import tcp_protocol
from .sinks import PAGE_SIZE, parse_address

DEFAULT_IDLE_TIMEOUT = 30.0        # seconds without a byte from the sender
DEFAULT_TOTAL_TIMEOUT = 3600.0     # seconds for one whole migration
DEFAULT_MAX_CONNECTIONS = 4
FIRST_BUFFER = 4 << 20             # batch buffer to start with; grows to the batch size


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


class MemoryBudget:
    """Bytes the connections may commit together; reserve() fails rather than wait."""

    def __init__(self, total):
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes):
        with self._lock:
            if self.used + nbytes > self.total:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes):
        with self._lock:
            self.used -= nbytes

    @property
    def free(self):
        with self._lock:
            return self.total - self.used


class _Refused(SinkError):
    """A limit of this receiver refused the connection or its claim."""


class _Connection:
    """One sender: its deadline, its reservations, its stream."""

    def __init__(self, rx, conn, peer):
        self.rx = rx
        self.conn = conn
        self.peer = "%s:%d" % peer[:2]
        self.t0 = time.monotonic()
        self.deadline = self.t0 + rx.total_timeout
        self.reserved = 0
        self.total_bound = False
        self.auth_deadline = None  # set while the handshake runs

    def timeout_reason(self):
        """What a socket timeout (or a passed deadline) means now."""
        if self.auth_deadline is not None:
            return ("authentication timeout: no complete response to the challenge within "
                    "%g s" % min(self.rx.idle_timeout, self.rx.total_timeout))
        if self.total_bound:
            return "total timeout: the stream took more than %g s" % self.rx.total_timeout
        return "idle timeout: nothing received for %g s" % self.rx.idle_timeout

    def arm(self):
        """Set the socket's timeout from the deadlines before a recv. The
        handshake's deadline is for the whole response, so a sender trickling
        a byte at a time cannot hold a connection slot past it."""
        now = time.monotonic()
        left = self.deadline - now
        if self.auth_deadline is not None:
            left = min(left, self.auth_deadline - now)
            if left <= 0:
                raise _Refused(self.timeout_reason())
        if left <= 0:
            raise _Refused("total timeout: the stream took more than %g s"
                           % self.rx.total_timeout)
        self.total_bound = left < self.rx.idle_timeout  # which limit a timeout means
        self.conn.settimeout(min(self.rx.idle_timeout, left))

    def recv_exact(self, mv, start, end):
        """Fill mv[start:end]; returns the end reached (short at EOF)."""
        at = start
        while at < end:
            self.arm()
            n = self.conn.recv_into(mv[at:end])
            if not n:
                return at
            at += n
        return at

    def reserve(self, nbytes, what):
        if not self.rx.budget.reserve(nbytes):
            raise _Refused(
                "%s: needs %s but only %s of the receiver's %s memory limit is free "
                "(pykvmdirty receive --max-memory)"
                % (what, limits.format_bytes(nbytes), limits.format_bytes(self.rx.budget.free),
                   limits.format_bytes(self.rx.budget.total)))
        self.reserved += nbytes

    def release(self):
        self.rx.budget.release(self.reserved)
        self.reserved = 0

    def read_stream(self, dest, pending=b""):
        """Apply batches up to EOS: header, then exactly its payload."""
        hdr_size = WIRE_BATCH_HEADER
        self.reserve(FIRST_BUFFER, "a batch buffer")
        buf = bytearray(FIRST_BUFFER)
        claimed = False
        while not dest.eos:
            mv = memoryview(buf)
            got = len(pending[:hdr_size])
            mv[:got] = pending[:got]
            got = self.recv_exact(mv, got, hdr_size)
            if got < hdr_size:
                dest.finish(got)  # raises: truncated
            if dest.feed(mv[:hdr_size]) == hdr_size:  # checks magic, length, seq
                pending = pending[hdr_size:]
                continue  # an empty batch
            need = dest.need(mv[:hdr_size])
            if need > len(buf):
                self.reserve(need - len(buf), "a batch of %d bytes" % need)
                grown = bytearray(need)
                grown[:hdr_size] = mv[:hdr_size]
                del mv
                buf = grown
                mv = memoryview(buf)
            extra = pending[hdr_size:need]
            mv[hdr_size:hdr_size + len(extra)] = extra
            pending = pending[need:]
            got = self.recv_exact(mv, hdr_size + len(extra), need)
            if got < need:
                dest.finish(got)  # raises: truncated
            if not claimed:
                # the MEM_SIZE record opens the stream (no page before it):
                # the decoder reads its claim, judged as feed will judge it,
                # and the claim is reserved before anything is mapped
                claim = dest.peek_mem_size(mv[:need])
                if claim is not None:
                    self.reserve_claim(claim[0])
                    claimed = True
            used = dest.feed(mv[:need])
            if used != need:
                raise SinkError("batch %d was not applied" % dest.stats()["batches"])
            del mv
        self.arm()
        if pending or self.conn.recv(1):
            raise SinkError("data after the end-of-stream record")

    def reserve_claim(self, total):
        est = limits.receiver_claim_estimate(total)
        self.reserve(est.total, "the stream claims %s of guest memory (%s with its hashes)"
                     % (limits.format_bytes(total), limits.format_bytes(est.total)))

    def success_report(self, dest):
        """(report line, hash bytes) of a complete stream."""
        regions, hashes = dest.hashes()
        if sys.byteorder != "little":
            hashes = hashes.astype("<u8")
        return (tcp_protocol.encode_report(True, dest.stats(), regions),
                memoryview(hashes).cast("B"))

    def send(self, *parts):
        for part in parts:
            self.arm()
            self.conn.sendall(part)

    def send_report(self, *parts):
        """The closing report: delivered even when a deadline has passed
        (that is what it reports), within its own idle_timeout bound."""
        self.conn.settimeout(self.rx.idle_timeout)
        for part in parts:
            self.conn.sendall(part)


def _drain(conn, seconds=0.5, limit=4 << 20):
    """After a failure report: end our side and discard (boundedly) what the
    sender still sends, so closing does not reset the connection and destroy
    the report before the sender reads it."""
    try:
        conn.shutdown(socket.SHUT_WR)
        end = time.monotonic() + seconds
        got = 0
        while got < limit:
            left = end - time.monotonic()
            if left <= 0:
                break
            conn.settimeout(left)
            n = len(conn.recv(65536))
            if not n:
                break
            got += n
    except OSError:
        pass


class Receiver:
    """Listens on (host, port) (port 0 picks one: see .port) and rebuilds guest
    memory from migration streams: serve_one() handles one sender here,
    serve() many at once on threads. prefault: bytes a helper thread
    populates ahead of dense writes (0 = off; see kd_wire_dest_set_prefault).
    Limits (module docstring): max_memory (bytes or "8GiB"; None = default),
    idle_timeout and total_timeout (seconds; timeout is the old name of
    idle_timeout), max_connections; secret (bytes): require the HMAC
    handshake."""

    def __init__(self, listen=("127.0.0.1", 0), timeout=None, prefault=0, max_memory=None,
                 idle_timeout=DEFAULT_IDLE_TIMEOUT, total_timeout=DEFAULT_TOTAL_TIMEOUT,
                 max_connections=DEFAULT_MAX_CONNECTIONS, secret=None):
        host, port = parse_address(listen, "listen address")
        if isinstance(prefault, bool) or not isinstance(prefault, int) or prefault < 0 \
                or prefault % PAGE_SIZE:
            raise ValueError("prefault must be a non-negative multiple of %d bytes, got %r"
                             % (PAGE_SIZE, prefault))
        if timeout is not None:
            idle_timeout = timeout
        for name, v in (("idle_timeout", idle_timeout), ("total_timeout", total_timeout)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or v != v or v == float("inf"):
                raise ValueError("%s must be a positive number of seconds, got %r" % (name, v))
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or not 1 <= max_connections <= 1024:
            raise ValueError("max_connections must be in 1..1024, got %r" % (max_connections,))
        self.limit, self.limit_how = limits.resolve_limit(max_memory)
        self.secret = tcp_protocol.check_secret(secret)
        self.prefault = prefault
        self.idle_timeout = float(idle_timeout)
        self.total_timeout = float(total_timeout)
        self.max_connections = max_connections
        self.budget = MemoryBudget(self.limit)
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.lsock.bind((host, port))
        except OSError as e:
            self.lsock.close()
            raise ValueError("cannot listen on %s:%d: %s" % (host, port, e.strerror or e)) \
                from None
        self.lsock.listen(max_connections + 8)
        self.host, self.port = self.lsock.getsockname()[:2]
        self.dest = None
        self._active = threading.Semaphore(max_connections)
        self._closed = False

    def close(self):
        self._closed = True
        self.lsock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self):
        conn, peer = self.lsock.accept()
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        return conn, peer

    def serve_one(self, keep_memory=False):
        """Accept one sender, apply its stream, report back. Returns a ReceiveResult
        (ok False with the error if the stream was truncated, corrupt, too
        large, too slow or unauthenticated)."""
        conn, peer = self._accept()
        with self._active:
            return self._handle(conn, peer, keep_memory)

    def serve(self, count=None, on_result=None):
        """Serve senders concurrently (at most max_connections at once) until
        `count` connections have finished (None: until close() from another
        thread, or Ctrl-C); on_result(r)
        is called, from the connection's thread, with each ReceiveResult.
        Returns the results in the order they finished."""
        results = []
        lock = threading.Lock()
        threads = []

        def finished(r):
            with lock:
                results.append(r)
            if on_result:
                on_result(r)

        def run(conn, peer):
            try:
                finished(self._handle(conn, peer))
            finally:
                self._active.release()

        accepted = 0
        self.lsock.settimeout(0.5)  # to notice close() from another thread
        while count is None or accepted < count:
            try:
                conn, peer = self._accept()
            except socket.timeout:
                if self._closed:
                    break
                continue
            except OSError:
                if self._closed:
                    break
                raise
            accepted += 1
            if not self._active.acquire(blocking=False):
                finished(self._busy(conn, peer))
                continue
            t = threading.Thread(target=run, args=(conn, peer), daemon=True,
                                 name="pykvmdirty-receive %s:%d" % peer[:2])
            threads.append(t)
            t.start()
        # (on Ctrl-C the daemon threads are left to the process's exit)
        for t in threads:
            t.join()
        return results

    def _busy(self, conn, peer):
        error = "busy: %d connections already (pykvmdirty receive --max-connections)" \
                % self.max_connections
        try:
            conn.settimeout(1.0)
            conn.sendall(tcp_protocol.encode_report(False, {}, error=error))
            _drain(conn, 0.2)
        except OSError:
            pass
        finally:
            conn.close()
        return ReceiveResult(False, error, {}, 0.0, "%s:%d" % peer[:2])

    def _handle(self, conn, peer, keep_memory=False):
        c = _Connection(self, conn, peer)
        error = None
        dest = None
        try:
            dest = WireDest(self.prefault)
            pending = b""
            if self.secret is not None:
                nonce, line = tcp_protocol.challenge()
                c.send(line)
                # the whole response within idle_timeout (and the total)
                c.auth_deadline = time.monotonic() + self.idle_timeout
                pending = tcp_protocol.check_response(conn, self.secret, nonce, c.arm)
                c.auth_deadline = None
                c.send(tcp_protocol.AUTH_OK)
            c.read_stream(dest, pending)
            report = c.success_report(dest)
        except socket.timeout:
            error = c.timeout_reason()
        except SinkError as e:
            error = str(e)
        except OSError as e:
            error = "connection failed: %s" % (e.strerror or e)
        except MemoryError:
            error = "out of memory"
        except Exception as e:  # never let one sender stop the server
            error = "internal error: %s: %s" % (type(e).__name__, e)
        try:
            stats = dest.stats() if dest is not None else {}
        except Exception:
            stats = {}
        seconds = time.monotonic() - c.t0
        try:
            if error is not None:
                report = (tcp_protocol.encode_report(False, stats, error=error),)
            c.send_report(*report)
        except (OSError, SinkError) as e:
            if error is None:
                error = "report not delivered: %s" % (getattr(e, "strerror", None) or e)
        finally:
            if error is not None:
                _drain(conn)
            conn.close()
            c.release()
        if keep_memory and error is None:
            self.dest = dest
        return ReceiveResult(error is None, error, stats, seconds, c.peer)
