"""Exceptions: C errnos become OSError subclasses that name the call and the bad value."""
import errno as _errno
import os


class KvmDirtyError(OSError):
    """A libkvmdirty call failed; ``errno`` is the kernel's errno for the same failure."""


class RingFullError(KvmDirtyError):
    """Raised only by helpers that cannot report a partial write (see VM.write)."""


class SinkError(RuntimeError):
    """The migration destination failed: connection lost, stream rejected, bad report."""


class WireError(SinkError):
    """The wire decoder rejected a migration stream (corrupt or truncated)."""


def check(rc, what, args=None):
    """Raise KvmDirtyError if a C call returned a negative errno; else return rc.

    ``what`` names the call; with ``args`` it is a format string filled in
    only on failure (hot paths pay nothing for the message)."""
    if rc < 0:
        code = -rc
        name = _errno.errorcode.get(code, str(code))
        if args is not None:
            what = what % args
        raise KvmDirtyError(code, "%s: %s (%s)" % (what, os.strerror(code), name))
    return rc
