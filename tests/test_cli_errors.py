"""Every ``pykvmdirty`` command turns the errors a user can cause into one
line on stderr and a nonzero status, never a traceback: checked by running
the CLI in subprocesses (bounded in time)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pykvmdirty import limits

CLI = [sys.executable, "-m", "pykvmdirty"]
FAST_MIGRATE = ["migrate", "--guest-size", "8MiB", "--slots", "2", "--quiet"]
FAST_COMPARE = ["--sizes", "1", "--backends", "flat", "--dirty", "0", "--repeats", "1",
                "--no-progress"]


def cli(*args, timeout=60):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd="/tmp")


def one_line_error(p, status, *words):
    """status: the exit status expected, or None for any failure."""
    assert p.returncode == status if status is not None else p.returncode > 0, \
        (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


UNWRITABLE = "/nonexistent-dir/out"


@pytest.mark.parametrize("args,option", [
    (FAST_MIGRATE + ["--json", UNWRITABLE], "--json"),
    (FAST_MIGRATE + ["--plot", UNWRITABLE], "--plot"),
    (FAST_MIGRATE + ["--record", UNWRITABLE], "--record"),
    (["compare"] + FAST_COMPARE + ["--json", UNWRITABLE], "--json"),
    (["compare"] + FAST_COMPARE + ["--plot", UNWRITABLE], "--plot"),
    (["sweep"] + FAST_COMPARE + ["--csv", UNWRITABLE], "--csv"),
    (["sweep"] + FAST_COMPARE + ["--json", UNWRITABLE], "--json"),
    (["calibrate", "--out", UNWRITABLE], "--out"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x[:1]))
def test_unwritable_outputs_are_refused_before_the_run(args, option):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    t0 = time.monotonic()
    p = cli(*args)
    one_line_error(p, 2, option, UNWRITABLE, "cannot be written")
    assert p.stdout == ""  # nothing ran
    assert time.monotonic() - t0 < 30


def test_output_path_that_is_a_directory(tmp_path):
    one_line_error(cli(*FAST_MIGRATE, "--json", str(tmp_path)), 2, "--json", "is a directory")


def test_a_good_output_path_is_not_left_behind_by_the_check(tmp_path):
    out = tmp_path / "r.json"
    p = cli(*FAST_MIGRATE, "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert out.read_text().startswith("{")


@pytest.mark.parametrize("args,words", [
    (["migrate", "--guest-size", "64TiB", "--quiet"], ["--guest-size 64TiB", "estimated"]),
    (["migrate", "--guest-size", "8MiB", "--rate", "nan"], ["--rate", "finite"]),
    (["migrate", "--guest-size", "8MiB", "--rate", "inf"], ["--rate", "finite"]),
    (["migrate", "--guest-size", "8MiB", "--downtime-limit", "nan"], ["--downtime-limit"]),
    (["migrate", "--guest-size", "8MiB", "--populate", "2"], ["--populate"]),
    (["migrate", "--guest-size", "8MiB", "--bandwidth", "1e400MB"], ["--bandwidth"]),
    (["migrate", "--guest-size", "1e400GiB"], ["--guest-size"]),
    (["migrate", "--guest-size", "lots"], ["--guest-size", "'lots'"]),
    (["migrate", "--guest-size", "8MiB", "--slots", "0"], ["--slots"]),
    (["migrate", "--guest-size", "8MiB", "--hot-fraction", "nan"], ["--hot-fraction"]),
    (["migrate", "--guest-size", "8MiB", "--max-memory", "1MiB"], ["--max-memory"]),
    (["migrate", "--guest-size", "8MiB", "--secret-file", "/x"], ["--secret-file"]),
    (["migrate", "--guest-size", "8MiB", "--trace", "/nonexistent.npz"], ["/nonexistent.npz"]),
    (["compare", "--sizes", "30000", "--layout", "many", "--slot-gib", "1024", "--backends",
      "bytemap", "--max-memory", "4GiB"], ["--sizes 30000", "bytemap", "9.2 GiB",
                                           "--max-memory"]),
    (["compare", "--sizes", "nan"], ["--sizes"]),
    (["demo", "--gib", "100000000"], ["--gib", "memslot"]),
    (["demo", "--gib", "4000", "--max-memory", "100MiB"], ["--gib 4000", "estimated"]),
    (["receive", "--listen", "127.0.0.1:99999"], ["port"]),
    (["receive", "--idle-timeout", "nan"], ["--idle-timeout"]),
    (["receive", "--secret-file", "/nonexistent"], ["--secret-file"]),
], ids=lambda x: " ".join(x[:3]) if isinstance(x, list) and x and x[0] in (
    "migrate", "compare", "demo", "receive") else None)
def test_bad_values_are_one_line_naming_the_option(args, words):
    one_line_error(cli(*args), 2, *words)


def test_a_machine_sized_guest_is_refused_by_default():
    size = "%dGiB" % (4 * limits.available_memory() // (1 << 30) + 4)
    one_line_error(cli("migrate", "--guest-size", size, "--pages", "contents", "--quiet"), 2,
                   "--guest-size %s needs an estimated" % size, "available")


def test_missing_input_files_are_one_line():
    one_line_error(cli("compare", "--cost-model", "/nonexistent.json", *FAST_COMPARE), None,
                   "/nonexistent.json", "No such file")


def _wait_for(proc, text, timeout=20):
    """Read proc's stdout until a line contains text."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if text in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError("%r never appeared" % text)


def test_ctrl_c_in_receive_exits_130_with_one_line():
    p = subprocess.Popen(CLI + ["receive", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        _wait_for(p, "listening on")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("limits:")]
    assert lines == ["pykvmdirty receive: interrupted"], err


def test_ctrl_c_in_migrate_exits_130_with_one_line():
    """Blocked sending to a receiver that never reads."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    p = subprocess.Popen(CLI + ["migrate", "--guest-size", "64MiB", "--populate", "1",
                                "--fill", "random", "--bandwidth", "0", "--quiet",
                                "--sink", "tcp://127.0.0.1:%d" % port],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")
    try:
        conn, _ = ls.accept()  # connected: now it fills the socket buffers and blocks
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        conn.close()
    finally:
        ls.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["pykvmdirty migrate: interrupted"], err


def test_malformed_receiver_report_is_one_line():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def fake():
        c, _ = ls.accept()
        c.settimeout(30)
        while c.recv(1 << 20):
            pass
        c.sendall(b'KDRPT1 {"ok": true, "regions": [[1]]}\n')
        c.close()
    t = threading.Thread(target=fake, daemon=True)
    t.start()
    p = cli(*FAST_MIGRATE, "--sink", "tcp://127.0.0.1:%d" % ls.getsockname()[1])
    t.join(10)
    ls.close()
    one_line_error(p, 1, "malformed report", "regions must be")


def test_stdout_closed_early_is_not_a_traceback():
    p = subprocess.run(" ".join(CLI + FAST_MIGRATE) + " | head -c 10 > /dev/null", shell=True,
                       capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert "Traceback" not in p.stderr, p.stderr


def test_receive_and_migrate_with_a_shared_secret(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    rx = subprocess.Popen(CLI + ["receive", "--listen", "127.0.0.1:0", "--secret-file",
                                 str(secret)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd="/tmp")
    try:
        port = int(_wait_for(rx, "listening on").rsplit(":", 1)[1])
        p = cli(*FAST_MIGRATE, "--sink", "tcp://127.0.0.1:%d" % port, "--secret-file",
                str(secret))
        assert p.returncode == 0, p.stderr
        assert "verified: yes" in p.stdout
        assert rx.wait(20) == 0
    finally:
        if rx.poll() is None:
            rx.kill()


@pytest.mark.parametrize("argv, message", [
    (["migrate", "--guest-size", "64MiB", "--link-bandwidth", "1"],
     "--link-bandwidth must be 0 (instant) or at least 1048576 bytes/s"),
    (["migrate", "--guest-size", "64MiB", "--step", "1e-9"], "--step must be >= 0.0001"),
    (["migrate", "--guest-size", "64MiB", "--cost-model", "/dev/zero"],
     "cost model file /dev/zero is larger than the 1048576 bytes"),
    (["migrate", "--guest-size", "64MiB", "--max-wait", "1e300"], "--max-wait must be <= 3600"),
    (["migrate", "--guest-size", "64MiB", "--max-wait", "1e20"], "--max-wait must be <= 3600"),
    (["migrate", "--guest-size", "64MiB", "--json", ""], "--json needs a file name"),
    (["migrate", "--guest-size", "4MiB", "--slots", "1", "--json", "/dev/full"],
     "--json /dev/full could not be written: No space left on device"),
    (["qemu", "--workload", "uniform", "--rate", "inf"], "--rate: must be a finite number"),
])
def test_bounded_and_named_before_or_at_the_output(argv, message, capsys):
    # each refused in one line naming the option: no traceback, no run of minutes,
    # no unbounded read, no output file reported written when it was not
    if "/dev/full" in argv and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    from pykvmdirty.cli import main
    rc = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_qemu_config_refuses_non_finite_values():
    from pykvmdirty.qemu.config import QemuConfig
    for field in ("downtime_limit", "timeout", "hot_share", "hot_fraction"):
        with pytest.raises(ValueError, match="%s must be finite" % field):
            QemuConfig(workload="hotspot", rate=1000, **{field: float("nan")})
