"""Errors of the QEMU runner: each names what failed and what QEMU said."""


class QemuError(RuntimeError):
    """Base class: something about the real QEMU processes went wrong."""


class QemuNotFound(QemuError):
    """qemu-system-x86_64 (or the qemu.qmp library) is not installed."""


class QemuExited(QemuError):
    """A QEMU process exited when it should have been running."""


class GuestStalled(QemuError):
    """The test guest made no progress (its status counter did not move)."""


class MigrationSetupError(QemuError):
    """A capability, a parameter or the destination's listening socket was refused."""


class MigrationFailed(QemuError):
    """QEMU reported the migration as failed or cancelled."""


class VerificationError(QemuError):
    """The destination's memory or counter does not match the source's."""
