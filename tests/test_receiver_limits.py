"""The TCP receiver against hostile or broken senders (real sockets on
127.0.0.1, every wait bounded): memory claims above its limit are refused at
once with the reason sent back, quiet and slow senders are dropped by the
idle and total timeouts without delaying anyone else, connections beyond the
bound are told busy, every per-connection error is reported while the server
keeps serving, and the optional shared-secret handshake keeps out senders
without the secret. Also the sender's side: a malformed or oversized report
is a clear error, never an unbounded allocation."""
import json
import socket
import threading
import time

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty._native import ffi, lib
from pykvmdirty.errors import SinkError
from pykvmdirty.migration import receiver as rxm
from pykvmdirty.migration.errors import MigrationError
from pykvmdirty.migration.receiver import Receiver
from pykvmdirty.migration.sinks import TcpSink
from pykvmdirty.migration.tcp_protocol import AuthError

GiB = 1 << 30
TiB = 1 << 40
SMALL = dict(guest_size="8MiB", slots=2, rate=2000, populate=0.5, fill="random",
             bandwidth=0)


def claim_batch(total_bytes, eos=True, seq=0):
    """A sealed batch with a MEM_SIZE record claiming total_bytes (and EOS)."""
    buf = np.zeros(4096, dtype=np.uint8)
    p = ffi.from_buffer(buf)
    h = lib.KD_WIRE_BATCH_HEADER
    gpas = np.array([0], dtype=np.uint64)
    sizes = np.array([total_bytes], dtype=np.uint64)
    n = lib.kd_wire_put_mem_size(p + h, 4096 - h, ffi.from_buffer("uint64_t[]", gpas),
                                 ffi.from_buffer("uint64_t[]", sizes), 1)
    assert n > 0
    nrec = 1
    if eos:
        m = lib.kd_wire_put_eos(p + h + n, 4096 - h - n)
        assert m > 0
        n += m
        nrec += 1
    assert lib.kd_wire_seal_batch(p, n, nrec, seq) == 0
    return buf[:h + n].tobytes()


class Served:
    """rx.serve(count) on a thread; .results once joined."""

    def __init__(self, rx, count):
        self.results = None
        self.t = threading.Thread(target=self._run, args=(rx, count), daemon=True)
        self.t.start()

    def _run(self, rx, count):
        self.results = rx.serve(count)

    def join(self, timeout=30):
        self.t.join(timeout)
        assert not self.t.is_alive(), "receiver did not finish in time"
        return self.results


def send_raw(port, data, read_reply=True, timeout=10):
    """Send bytes as a sender would; returns (report dict or None, reply bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        if not read_reply:
            return None, b""
        reply = bytearray()
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            reply += d
    line = bytes(reply).split(b"\n", 1)[0]
    rep = json.loads(line[len(b"KDRPT1 "):]) if line.startswith(b"KDRPT1 ") else None
    return rep, bytes(reply)


def test_claim_above_the_limit_is_refused_at_once_and_serving_goes_on():
    with Receiver(("127.0.0.1", 0), max_memory="256MiB") as rx:
        served = Served(rx, 3)
        t0 = time.monotonic()
        rep, reply = send_raw(rx.port, claim_batch(512 * GiB))
        assert time.monotonic() - t0 < 5
        assert rep["ok"] is False and "claims 512.0 GiB" in rep["error"]
        assert "--max-memory" in rep["error"] and len(reply) < 4096  # no hashes
        rep, _ = send_raw(rx.port, claim_batch(64 * TiB))  # killed the old receiver
        assert rep["ok"] is False and "claims 64.0 TiB" in rep["error"]
        r = kd.migrate(sink="tcp://127.0.0.1:%d" % rx.port, **SMALL)
        assert r.verified is True
        results = served.join()
    assert [x.ok for x in results] == [False, False, True]
    assert rx.budget.used == 0


def test_claims_share_one_budget_across_connections():
    with Receiver(("127.0.0.1", 0), max_memory="96MiB", idle_timeout=5) as rx:
        served = Served(rx, 2)
        hold = socket.create_connection(("127.0.0.1", rx.port), timeout=10)
        hold.sendall(claim_batch(64 << 20, eos=False))  # claims 64 MiB, then waits
        deadline = time.monotonic() + 5
        while rx.budget.used < (64 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rx.budget.used >= 64 << 20
        rep, _ = send_raw(rx.port, claim_batch(48 << 20))
        assert rep["ok"] is False and "claims 48.0 MiB" in rep["error"]
        assert "free" in rep["error"]
        hold.close()
        results = served.join()
    assert sorted(x.ok for x in results) == [False, False]


def test_quiet_sender_blocks_no_one_and_is_dropped_by_the_idle_timeout():
    with Receiver(("127.0.0.1", 0), idle_timeout=1.0) as rx:
        served = Served(rx, 2)
        quiet = socket.create_connection(("127.0.0.1", rx.port), timeout=10)
        quiet.sendall(b"KDB1" + bytes(8))  # 12 bytes, then silence
        t0 = time.monotonic()
        r = kd.migrate(sink="tcp://127.0.0.1:%d" % rx.port, **SMALL)
        assert r.verified is True
        assert time.monotonic() - t0 < 10
        results = served.join()
        quiet.settimeout(5)
        line = quiet.recv(4096)
        quiet.close()
    failed = [x for x in results if not x.ok]
    assert len(failed) == 1 and "idle timeout" in failed[0].error
    assert b"idle timeout" in line


def test_slow_sender_is_dropped_by_the_total_timeout():
    data = claim_batch(1 << 20)
    with Receiver(("127.0.0.1", 0), idle_timeout=2.0, total_timeout=1.0) as rx:
        served = Served(rx, 1)
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as c:
            for i in range(len(data) - 1):  # a byte every 0.1 s: never idle
                try:
                    c.sendall(data[i:i + 1])
                except OSError:
                    break
                time.sleep(0.1)
                if served.t.is_alive() is False:
                    break
        results = served.join()
    assert not results[0].ok and "total timeout" in results[0].error


def test_connections_beyond_the_bound_are_told_busy():
    with Receiver(("127.0.0.1", 0), max_connections=1, idle_timeout=3) as rx:
        served = Served(rx, 2)
        quiet = socket.create_connection(("127.0.0.1", rx.port), timeout=10)
        time.sleep(0.2)
        rep, _ = send_raw(rx.port, b"")
        assert rep["ok"] is False and "busy" in rep["error"]
        quiet.close()
        results = served.join()
    assert any("busy" in (x.error or "") for x in results)


@pytest.mark.parametrize("data", [b"", b"garbage" * 100, claim_batch(1 << 20)[:30],
                                  claim_batch(1 << 20) + b"trailing"],
                         ids=["empty", "garbage", "truncated", "after-eos"])
def test_bad_streams_are_reported_and_serving_goes_on(data):
    with Receiver(("127.0.0.1", 0)) as rx:
        served = Served(rx, 2)
        rep, _ = send_raw(rx.port, data)
        assert rep is not None and rep["ok"] is False and rep["error"]
        assert kd.migrate(sink="tcp://127.0.0.1:%d" % rx.port, **SMALL).verified is True
        results = served.join()
    assert [x.ok for x in results] == [False, True]


def test_an_unexpected_error_in_one_connection_is_reported(monkeypatch):
    def broken(self):
        raise RuntimeError("hash table on fire")
    with Receiver(("127.0.0.1", 0)) as rx:
        served = Served(rx, 2)
        monkeypatch.setattr(rxm.WireDest, "hashes", broken)
        with pytest.raises(MigrationError, match="hash table on fire"):
            kd.migrate(sink="tcp://127.0.0.1:%d" % rx.port, **SMALL)
        monkeypatch.undo()
        assert kd.migrate(sink="tcp://127.0.0.1:%d" % rx.port, **SMALL).verified is True
        results = served.join()
    assert [x.ok for x in results] == [False, True]
    assert "internal error: RuntimeError" in results[0].error


def test_shared_secret_handshake():
    secret = b"correct horse battery staple"
    with Receiver(("127.0.0.1", 0), secret=secret, idle_timeout=5) as rx:
        served = Served(rx, 3)
        addr = "127.0.0.1:%d" % rx.port
        r = kd.migrate(sink=TcpSink(addr, secret=secret), **SMALL)
        assert r.verified is True
        # the receiver's reason, never "Broken pipe" (the sender waits for the verdict)
        with pytest.raises(MigrationError, match="refused the connection: authentication "
                           "failed: the sender's secret differs"):
            kd.migrate(sink=TcpSink(addr, secret=b"wrong"), **SMALL)
        with pytest.raises(MigrationError, match="requires the shared secret"):
            kd.migrate(sink="tcp://" + addr, **SMALL)
        results = served.join()
    assert [x.ok for x in results] == [True, False, False]
    assert all(x.stats.get("batches", 0) == 0 for x in results[1:])  # nothing decoded


def test_wrong_secret_always_reads_the_receivers_reason():
    """Repeated: the refusal is read before anything is streamed, so it never
    races the receiver's close (was: "Broken pipe" some of the time)."""
    with Receiver(("127.0.0.1", 0), secret=b"right", idle_timeout=5) as rx:
        served = Served(rx, 5)
        for _ in range(5):
            with pytest.raises(MigrationError, match="secret differs"):
                kd.migrate(sink=TcpSink("127.0.0.1:%d" % rx.port, secret=b"wrong"), **SMALL)
        results = served.join()
    assert all("secret differs" in x.error for x in results)


def test_trickled_handshakes_cannot_hold_the_slots():
    """Senders trickling their authentication response a byte at a time (each
    byte well inside the idle timeout) are dropped when the whole response
    is not in within idle_timeout; a real sender is then served, not told
    busy (was: the slots were held until the total timeout or longer)."""
    secret = b"s3cret"
    with Receiver(("127.0.0.1", 0), secret=secret, idle_timeout=1.0, total_timeout=60,
                  max_connections=4) as rx:
        served = Served(rx, 5)
        replies = [b""] * 4

        def trickle(i):
            with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as c:
                c.recv(4096)  # the challenge
                c.settimeout(0.3)
                for _ in range(60):  # at most 18 s of trickling
                    try:
                        c.sendall(b"K")
                        replies[i] = c.recv(4096)
                        break  # the receiver answered (or closed)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
        ts = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in range(4)]
        for th in ts:
            th.start()
        for th in ts:
            th.join(60)
        r = kd.migrate(sink=TcpSink("127.0.0.1:%d" % rx.port, secret=secret), **SMALL)
        assert r.verified is True
        results = served.join(60)
    assert all(b"authentication timeout" in x for x in replies), replies
    assert sorted(x.ok for x in results) == [False] * 4 + [True]


def test_sender_with_a_secret_and_a_receiver_without_one():
    with Receiver(("127.0.0.1", 0), idle_timeout=2) as rx:
        served = Served(rx, 1)
        with pytest.raises(MigrationError, match="refused the connection|no authentication"):
            kd.migrate(sink=TcpSink("127.0.0.1:%d" % rx.port, secret=b"s", timeout=5),
                       **SMALL)
        served.join()


def fake_receiver(report_line, extra=b""):
    """A listener that swallows one stream and answers with report_line."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def run():
        c, _ = ls.accept()
        c.settimeout(20)
        try:
            while c.recv(1 << 20):
                pass
            c.sendall(report_line + extra)
        finally:
            c.close()
            ls.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls.getsockname()[1], t


@pytest.mark.parametrize("line,message", [
    (b'KDRPT1 {"ok": true, "regions": [[1]]}\n', "regions must be"),
    (b'KDRPT1 {"ok": true, "regions": [[0, 1099511627776]]}\n', "not the .* announced"),
    (b'KDRPT1 {"ok": true}\n', "regions must be"),
    (b'KDRPT1 [1, 2]\n', "not a JSON object"),
    (b'KDRPT1 {nope\n', "not JSON"),
    (b'KDRPT1 {"ok": false, "error": "disk on fire"}\n', "disk on fire"),
    (b'HELLO\n', "malformed report"),
    (b'KDRPT1 ' + b'x' * (2 << 20), "longer than"),
], ids=["short-region", "huge-region", "no-regions", "not-object", "not-json", "error",
        "no-magic", "endless-line"])
def test_malformed_reports_are_clear_errors(line, message):
    port, t = fake_receiver(line)
    with pytest.raises(MigrationError, match=message):
        kd.migrate(sink="tcp://127.0.0.1:%d" % port, **SMALL)
    t.join(20)


def test_receiver_argument_checks():
    with pytest.raises(ValueError, match="idle_timeout must be a positive"):
        Receiver(("127.0.0.1", 0), idle_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_connections must be in"):
        Receiver(("127.0.0.1", 0), max_connections=0)
    with pytest.raises(ValueError, match="secret must be"):
        Receiver(("127.0.0.1", 0), secret="text, not bytes")
    with pytest.raises(ValueError, match="max_memory must be a size"):
        Receiver(("127.0.0.1", 0), max_memory="lots")
    assert issubclass(AuthError, SinkError)
