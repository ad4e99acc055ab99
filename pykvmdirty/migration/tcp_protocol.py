"""What travels on a migration TCP connection besides the wire stream.

One connection carries one migration (``TcpSink`` -> ``Receiver``)::

    receiver -> sender   challenge      only if the receiver has a shared secret
    sender   -> receiver response       only then
    sender   -> receiver the wire stream (csrc/migrate/wire_encode.c), batches up to EOS; SHUT_WR
    receiver -> sender   report line, then (if ok) the page hashes

    challenge  b"KDAUTH1 " + 32 hex digits (16 random bytes, the nonce) + b"\\n"
    response   b"KDAUTH1 " + 64 hex digits + b"\\n":
               HMAC-SHA256(secret, b"pykvmdirty sender\\0" + nonce)
    report     b"KDRPT1 " + a JSON object + b"\\n":
               {"ok": true, "regions": [[gpa, size], ...], "stats": {...}} then the
               little-endian uint64 hash of every page of the regions, in address
               order; or {"ok": false, "error": "...", "stats": {...}} and nothing else.

Every line is at most MAX_LINE bytes. The handshake authenticates the sender
to the receiver (which then commits memory for it); it neither encrypts the
stream nor authenticates the receiver (README: Security and limits).
"""
import hashlib
import hmac
import json
import os

from ..errors import SinkError

AUTH_MAGIC = b"KDAUTH1 "
# The receiver's answer to a valid response; a refusal is the error report
# (REPORT_MAGIC), so the sender learns the reason before it streams anything.
AUTH_OK = b"KDAUTH1 ok\n"
REPORT_MAGIC = b"KDRPT1 "
MAX_LINE = 1 << 20
MAX_SECRET = 4096
NONCE_BYTES = 16
_SENDER = b"pykvmdirty sender\0"


class AuthError(SinkError):
    """The shared-secret handshake failed (wrong secret, or only one side has one)."""


def recv_line(sock, limit, what, arm=None):
    """(line including its newline, bytes received after it); the line lacks
    its newline when the peer closed first. Raises SinkError past limit.
    arm(), if given, runs before every recv (to set the socket's timeout from
    a deadline for the whole line: a byte at a time does not extend it)."""
    data = bytearray()
    while b"\n" not in data:
        if arm is not None:
            arm()
        chunk = sock.recv(min(65536, limit + 1 - len(data)))
        if not chunk:
            return bytes(data), b""
        data += chunk
        if b"\n" not in data and len(data) > limit:
            raise SinkError("%s longer than %d bytes" % (what, limit))
    i = data.index(b"\n") + 1
    return bytes(data[:i]), bytes(data[i:])


def read_secret_file(path, option="secret file"):
    """The shared secret in a file (bytes, without a trailing newline)."""
    try:
        with open(path, "rb") as f:
            secret = f.read(MAX_SECRET + 1)
    except OSError as e:
        raise ValueError("%s %s: %s" % (option, path, e.strerror or e)) from None
    secret = secret.rstrip(b"\r\n")
    if not secret or len(secret) > MAX_SECRET:
        raise ValueError("%s %s must hold 1 to %d bytes, got %d"
                         % (option, path, MAX_SECRET, len(secret)))
    return secret


def check_secret(secret):
    if secret is None:
        return None
    if not isinstance(secret, (bytes, bytearray)) or not 0 < len(secret) <= MAX_SECRET:
        raise ValueError("secret must be 1 to %d bytes, got %r"
                         % (MAX_SECRET, type(secret).__name__))
    return bytes(secret)


def _mac(secret, nonce):
    return hmac.new(secret, _SENDER + nonce, hashlib.sha256).hexdigest().encode()


# -- receiver side -----------------------------------------------------------

def challenge():
    """(nonce, the challenge line to send)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AUTH_MAGIC + nonce.hex().encode() + b"\n"


def check_response(sock, secret, nonce, arm=None):
    """Read the sender's response (arm: see recv_line); returns the bytes
    received after it. Raises AuthError if it is missing or wrong; the caller
    sends AUTH_OK, or the error report, before reading anything else."""
    line, rest = recv_line(sock, 200, "authentication response", arm)
    if not line.startswith(AUTH_MAGIC):
        raise AuthError("the sender did not authenticate (this receiver needs the shared "
                        "secret: pykvmdirty migrate --secret-file)")
    if not hmac.compare_digest(line[len(AUTH_MAGIC):].strip(), _mac(secret, nonce)):
        raise AuthError("authentication failed: the sender's secret differs")
    return rest


# -- sender side -------------------------------------------------------------

def answer_challenge(sock, secret, where):
    """Read the receiver's challenge and send the response."""
    line, _ = recv_line(sock, MAX_LINE, "%s's challenge" % where)
    if line.startswith(REPORT_MAGIC):
        raise AuthError("%s sent no authentication challenge (started without a secret?); "
                        "it reported: %s" % (where, _report_error(line)))
    if not line.startswith(AUTH_MAGIC):
        raise AuthError("%s sent no authentication challenge (started without a secret?)"
                        % where)
    try:
        nonce = bytes.fromhex(line[len(AUTH_MAGIC):].strip().decode("ascii"))
    except ValueError:
        nonce = b""
    if len(nonce) != NONCE_BYTES:
        raise AuthError("%s sent a malformed challenge %r" % (where, line[:60]))
    sock.sendall(AUTH_MAGIC + _mac(secret, nonce) + b"\n")
    # Wait for the verdict before streaming: a refused sender would otherwise
    # see only "Broken pipe" when the receiver closes, never its reason.
    line, _ = recv_line(sock, MAX_LINE, "%s's answer to the authentication" % where)
    if line == AUTH_OK:
        return
    if line.startswith(REPORT_MAGIC):
        raise AuthError("%s refused the connection: %s" % (where, _report_error(line)))
    if not line:
        raise AuthError("%s closed the connection after the authentication response"
                        % where)
    raise AuthError("%s answered the authentication with %r" % (where, line[:60]))


# -- the report --------------------------------------------------------------

def encode_report(ok, stats, regions=None, error=None):
    rep = dict(ok=True, regions=[[int(g), int(s)] for g, s in regions], stats=stats) if ok \
        else dict(ok=False, error=str(error)[:4096], stats=stats)
    return REPORT_MAGIC + json.dumps(rep).encode() + b"\n"


def _report_error(line):
    try:
        rep = json.loads(line[len(REPORT_MAGIC):])
        return str(rep.get("error"))[:500] if isinstance(rep, dict) else "unknown error"
    except ValueError:
        return "unknown error"


def parse_report(line, expected_regions, where, sent):
    """The receiver's report line -> (regions, stats), checked against the
    regions this sender announced; SinkError for a failure or anything
    malformed. The caller then reads exactly the hashes of its own pages."""
    if not line.endswith(b"\n"):
        if line.startswith(AUTH_MAGIC):
            raise AuthError("%s requires the shared secret (pykvmdirty migrate --secret-file)"
                            % where)
        raise SinkError("%s closed the connection without a report after %d bytes of the "
                        "stream" % (where, sent))
    if line.startswith(AUTH_MAGIC):
        raise AuthError("%s requires the shared secret (pykvmdirty migrate --secret-file)"
                        % where)
    if not line.startswith(REPORT_MAGIC):
        raise SinkError("%s sent a malformed report %r" % (where, line[:60]))
    try:
        rep = json.loads(line[len(REPORT_MAGIC):])
    except ValueError as e:
        raise SinkError("%s sent a report that is not JSON (%s)" % (where, e)) from None
    if not isinstance(rep, dict):
        raise SinkError("%s sent a report that is not a JSON object" % where)
    if rep.get("ok") is not True:
        raise SinkError("%s rejected the stream: %s" % (where, str(rep.get("error"))[:500]))
    regions = rep.get("regions")
    if not isinstance(regions, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r)
            for r in regions):
        raise SinkError("%s sent a malformed report: regions must be [[gpa, size], ...], got "
                        "%.80r" % (where, regions))
    regions = sorted((int(g), int(s)) for g, s in regions)
    if regions != sorted(expected_regions):
        raise SinkError("%s reports regions %.200s, not the %.200s this sender announced"
                        % (where, regions, sorted(expected_regions)))
    stats = rep.get("stats")
    return regions, stats if isinstance(stats, dict) else {}
