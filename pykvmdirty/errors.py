"""Exceptions: C errnos become OSError subclasses that name the call and the bad value."""
import errno as _errno
import os


class KvmDirtyError(OSError):
    """A libkvmdirty call failed; ``errno`` is the kernel's errno for the same failure."""


class RingFullError(KvmDirtyError):
    """A vCPU's dirty ring reached its soft limit (KVM_EXIT_DIRTY_RING_FULL) where
    the caller cannot go on: nobody harvests and resets it. VM.write reports the
    exit in its result instead; this is raised by writers that have no reaper
    (migration.workloads.VirtualWorkload without on_ring_full). errno is
    ENOBUFS; ``vcpu`` and ``applied`` (gfns written before the exit) say where."""

    def __init__(self, vcpu, applied):
        super().__init__(_errno.ENOBUFS, "vCPU %d's dirty ring is full after %d writes and "
                         "nobody harvests it (KVM_EXIT_DIRTY_RING_FULL)" % (vcpu, applied))
        self.vcpu = vcpu
        self.applied = applied


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
