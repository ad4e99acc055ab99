"""The migration's own error (sink failures surface as this)."""


class MigrationError(RuntimeError):
    """The migration could not complete (sink failure, verification setup)."""
