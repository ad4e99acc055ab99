"""Pre-copy live migration of an emulated (or real-KVM) guest: configuration,
the controller around the C scan-and-send loop, sinks and the TCP receiver,
guest workloads, write traces and the report. ``migrate()`` is the entry."""
from .errors import MigrationError
from .report import MigrationReport, PassMetrics
from .placements import PlacementComparison, migrate_both_placements
from .run import migrate

__all__ = ["migrate", "migrate_both_placements", "PlacementComparison", "MigrationError",
           "MigrationReport", "PassMetrics"]
