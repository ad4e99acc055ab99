"""Exceptions: C errnos become OSError subclasses that name the call and the bad value."""
import errno as _errno
import os


class KvmDirtyError(OSError):
    """A libkvmdirty call failed; ``errno`` is the kernel's errno for the same failure."""


class RingFullError(KvmDirtyError):
    """Raised only by helpers that cannot report a partial write (see VM.write)."""


def check(rc, what):
    """Raise KvmDirtyError if a C call returned a negative errno; else return rc."""
    if rc < 0:
        code = -rc
        name = _errno.errorcode.get(code, str(code))
        raise KvmDirtyError(code, "%s: %s (%s)" % (what, os.strerror(code), name))
    return rc
