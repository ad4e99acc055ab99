"""Real-time migration with concurrent C writer threads (2 vCPUs), the TCP
sink and receiver (including faults), and the CLI."""
import json
import socket
import subprocess
import sys
import threading

import pytest

from pykvmdirty.cli import main
from pykvmdirty.migration import MigrationError, migrate
from pykvmdirty.migration.receiver import Receiver

COMBOS = [("flat", "global"), ("flat", "per-slot"), ("flat", "chunked-clear"),
          ("twolevel", "per-slot"), ("twolevel", "chunked-clear"), ("bytemap", "global"),
          ("ring", "ring"), ("ring", "per-slot")]
RT = dict(guest_size="16MiB", slots=4, mode="realtime", vcpus=2, rate=2000,
          bandwidth=32 << 20, downtime_limit=0.005, max_passes=5, duration_limit=20,
          populate=1.0, fill="random")


@pytest.mark.parametrize("backend,strategy", COMBOS, ids=lambda x: x)
def test_realtime_concurrent_writers_verify(backend, strategy):
    extra = dict(ring_entries=512) if backend == "ring" else {}
    r = migrate(backend=backend, strategy=strategy, workload="uniform", **RT, **extra)
    assert r.verified is True, r.mismatched_pages
    assert r.workload_writes > 0
    assert r.npasses >= 3


def test_realtime_time_cap_and_auto_converge():
    r = migrate(guest_size="4MiB", slots=2, mode="realtime", workload="uniform",
                rate=300000, bandwidth=16 << 20, max_wait=0.02, auto_converge=True,
                max_passes=6, downtime_limit=0.005, duration_limit=30,
                populate=1.0, fill="random", policy="passes")
    assert r.verified is True
    assert r.total("time_cap_exits") > 0
    assert r.auto_converge_triggers >= 1 and r.final_throttle_pct >= 20


def _serve(rx, out):
    out.append(rx.serve_one())


@pytest.mark.parametrize("prefault", [0, 4 << 20], ids=["plain", "prefault"])
def test_tcp_end_to_end_verified(prefault):
    with Receiver(("127.0.0.1", 0), prefault=prefault) as rx:
        results = []
        t = threading.Thread(target=_serve, args=(rx, results))
        t.start()
        r = migrate(guest_size="32MiB", slots=3, sink="tcp://127.0.0.1:%d" % rx.port,
                    rate=20000, bandwidth=64 << 20, fill="random", populate=0.5)
        t.join(30)
    assert r.verified is True
    assert results and results[0].ok and results[0].stats["eos"] == 1
    assert results[0].stats["pages"] + results[0].stats["zero_pages"] == r.total("pages_sent")


def test_tcp_receiver_closing_mid_stream_fails_the_sender_clearly():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def rude():
        c, _ = ls.accept()
        c.recv(100_000)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
        c.close()
    t = threading.Thread(target=rude)
    t.start()
    with pytest.raises(MigrationError, match="closed the connection"):
        migrate(guest_size="64MiB", slots=2, sink="tcp://127.0.0.1:%d" % ls.getsockname()[1],
                populate=1.0, fill="random", bandwidth=0, workload="idle", rate=0)
    t.join(10)
    ls.close()


def test_tcp_nobody_listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(MigrationError, match="cannot connect"):
        migrate(guest_size="8MiB", sink="tcp://127.0.0.1:%d" % port)


def _capture_stream(**kw):
    """Run a migration into a socket we control; return the raw stream bytes."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    data = bytearray()

    def grab():
        c, _ = ls.accept()
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            data.extend(b)
        c.sendall(b'KDRPT1 {"ok": false, "error": "capture only"}\n')
        c.close()
    t = threading.Thread(target=grab)
    t.start()
    with pytest.raises(MigrationError, match="capture only"):
        migrate(sink="tcp://127.0.0.1:%d" % ls.getsockname()[1], **kw)
    t.join(10)
    ls.close()
    return bytes(data)


def _feed_receiver(payload):
    with Receiver(("127.0.0.1", 0)) as rx:
        results = []
        t = threading.Thread(target=_serve, args=(rx, results))
        t.start()
        c = socket.create_connection(("127.0.0.1", rx.port))
        report = b""
        try:  # the receiver may reset the connection once it has seen enough
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            report = c.recv(65536)
        except OSError:
            pass
        c.close()
        t.join(10)
    return results[0], report


@pytest.fixture(scope="module")
def stream():
    return _capture_stream(guest_size="8MiB", slots=2, populate=0.5, fill="random")


def test_receiver_accepts_the_captured_stream(stream):
    res, report = _feed_receiver(stream)
    assert res.ok, res.error
    assert report.startswith(b"KDRPT1 ") and json.loads(report[7:report.index(b"\n")])["ok"]


@pytest.mark.parametrize("cut", [100, 5000, 1 << 20])
def test_receiver_detects_truncation(stream, cut):
    res, report = _feed_receiver(stream[:len(stream) - cut])
    assert not res.ok and "truncated" in res.error
    assert report == b"" or b'"ok": false' in report


def test_receiver_detects_corruption(stream):
    bad = bytearray(stream)
    bad[len(bad) // 2] ^= 0x01
    res, report = _feed_receiver(bytes(bad))
    assert not res.ok and "checksum mismatch" in res.error
    assert report == b"" or b"checksum" in report


def test_cli_migrate_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["migrate", "--guest-size", "16MiB", "--slots", "2", "--quiet",
               "--json", str(out), "--strategy", "per-slot"])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["totals"]["verified"] is True and d["config"]["strategy"] == "per-slot"
    assert "verified: yes" in capsys.readouterr().out


def test_cli_bad_arguments(capsys):
    assert main(["migrate", "--guest-size", "8MiB", "--clear-shift", "40", "--quiet"]) == 2
    assert "--clear-shift must be in 6..31" in capsys.readouterr().err
    assert main(["migrate", "--guest-size", "8MiB", "--bandwidth=-5MiB", "--quiet"]) == 2
    assert "must not be negative" in capsys.readouterr().err


def test_cli_receive_and_migrate_over_tcp(tmp_path):
    rx = subprocess.Popen([sys.executable, "-m", "pykvmdirty", "receive", "--listen",
                           "127.0.0.1:0", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        line = rx.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        rc = main(["migrate", "--guest-size", "16MiB", "--slots", "2", "--quiet", "--sink",
                   "tcp://127.0.0.1:%d" % port])
        assert rc == 0
        res = json.loads(rx.stdout.readline())
        assert res["ok"] is True and res["stats"]["eos"] == 1
        assert rx.wait(10) == 0
    finally:
        if rx.poll() is None:
            rx.kill()


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "m.png"
    assert main(["migrate", "--guest-size", "8MiB", "--slots", "2", "--quiet",
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_receiver_bad_prefault():
    with pytest.raises(ValueError, match="prefault must be a non-negative multiple of 4096"):
        Receiver(("127.0.0.1", 0), prefault=1000)
