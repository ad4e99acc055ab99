"""The figures QEMU reports of a migration (query-migrate), under the names
the runner's measurement (runner.QemuResult) and the loop's prediction
(predict.py) share."""
from dataclasses import asdict, dataclass

#: the figures a prediction is judged on, in report order
KEYS = ("status", "total_time", "setup_time", "downtime", "dirty_sync_count", "transferred",
        "normal", "duplicate", "throttle_max")


@dataclass
class MigrationFigures:
    """What QEMU reports of a migration (query-migrate; times in seconds,
    sizes in bytes), under the names both the runner's measurement
    (runner.QemuResult) and the model's prediction use."""
    status: str = ""
    total_time: float = 0.0
    setup_time: float = 0.0
    downtime: float = 0.0
    expected_downtime: float = 0.0
    dirty_sync_count: int = 0
    transferred: int = 0
    normal: int = 0
    duplicate: int = 0
    throttle_max: int = 0           # highest cpu-throttle-percentage, %

    def as_dict(self):
        return asdict(self)
