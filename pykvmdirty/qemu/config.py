"""What one real QEMU migration runs: the guest, its workload and QEMU's migration settings.

Sizes are bytes, rates are pages/s (4 KiB pages), times are seconds.  The
defaults are QEMU 7.2's own (max-bandwidth 128 MiB/s, downtime-limit 300 ms,
cpu-throttle-initial 20, -increment 10, every capability off) and the a-b
guest of QEMU's tests/migration (pages [1 MiB, 100 MiB) of a 1 GiB guest).
"""
import math
import numbers
from dataclasses import asdict, dataclass, field

from . import layout
from ..units import MiB
from .layout import PAGE

ACCELS = ("auto", "kvm", "tcg")
INTERFACES = ("bitmap", "ring")
GUESTS = ("firmware", "linux")
#: QEMU's -accel kvm,dirty-ring-size=N for --interface ring (entries per vCPU)
DIRTY_RING_SIZE = 4096


def _number(name, value, lo=None, hi=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number, got %r" % (name, value))
    v = float(value)
    if not math.isfinite(v):
        raise ValueError("%s must be finite, got %r" % (name, value))
    if integer and v != int(v):
        raise ValueError("%s must be a whole number, got %r" % (name, value))
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError("%s must be in [%s, %s], got %r" % (name, lo, hi, value))
    return int(v) if integer else v


@dataclass
class QemuConfig:
    guest_size: int = 1024 * MiB
    workload: str = "ab"            # ab, uniform, hotspot, idle
    start: int = 1 * MiB            # workload range [start, end), page aligned
    end: int = 100 * MiB
    rate: int = 0                   # pages/s; 0 = unpaced (ab only)
    hot_fraction: float = 0.05      # hotspot: share of the range's pages that are hot
    hot_share: float = 0.9          # hotspot: share of the writes that go to them
    seed: int = 1
    bandwidth: int = 128 * MiB      # max-bandwidth, bytes/s
    downtime_limit: float = 0.3     # seconds
    auto_converge: bool = False
    throttle_initial: int = 20      # cpu-throttle-initial, %
    throttle_increment: int = 10    # cpu-throttle-increment, %
    xbzrle: bool = False
    multifd: bool = False
    accel: str = "auto"             # auto: KVM if the guest progresses under it, else TCG
    interface: str = "bitmap"       # KVM's dirty interface: bitmap, or ring (KVM only)
    warmup: float = 1.0             # guest runs this long before the migration starts
    timeout: float = 60.0           # a migration still running after this is cancelled
    port: int = 0                   # destination port; 0 = let the kernel choose
    boot_timeout: float = 3.0       # a guest with no progress after this has stalled
    verify: bool = True
    guest: str = "firmware"         # firmware (guest/), or linux (qemu/linux/: a real kernel)
    kernel: str = ""                # linux: the kernel image ("" = the newest /boot/vmlinuz-*)
    extra: dict = field(default_factory=dict)   # free-form labels carried into the result

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise TypeError/ValueError naming the first bad value."""
        gs = _number("guest_size", self.guest_size, 64 * MiB, 64 * 1024 * MiB, integer=True)
        if gs % MiB:
            raise ValueError("guest_size must be a whole number of MiB (QEMU's -m), got %r "
                             "bytes (MB is 10^6 bytes; QEMU's M is MiB)" % gs)
        if self.guest not in GUESTS:
            raise ValueError("guest must be one of %s, got %r" % (", ".join(GUESTS), self.guest))
        if not isinstance(self.kernel, str):
            raise TypeError("kernel must be a path (str), got %r" % (self.kernel,))
        if self.guest == "linux":
            from .linux.workloads import check as check_linux_workload
            check_linux_workload(self.workload)
        elif self.workload not in layout.WORKLOADS:
            raise ValueError("workload must be one of %s, got %r"
                             % (", ".join(layout.WORKLOADS), self.workload))
        start = _number("start", self.start, 0, None, integer=True)
        end = _number("end", self.end, 0, None, integer=True)
        if self.workload != "idle" and self.guest == "firmware":
            if start % PAGE or end % PAGE:
                raise ValueError("start and end must be 4 KiB aligned, got %#x, %#x"
                                 % (start, end))
            if start < MiB:
                raise ValueError("start must be >= 1 MiB (the firmware lives below), got %#x"
                                 % start)
            limit = min(gs, layout.LOWMEM_LIMIT)
            if not start < end <= limit:
                raise ValueError("need start < end <= %#x (guest RAM below 3 GiB), got "
                                 "[%#x, %#x)" % (limit, start, end))
        rate = _number("rate", self.rate, 0, 1e9, integer=True)
        if self.guest == "firmware" and self.workload in ("uniform", "hotspot") and rate == 0:
            raise ValueError("workload %r needs rate > 0 pages/s" % self.workload)
        _number("hot_fraction", self.hot_fraction, 0, 1)
        if self.hot_fraction == 0:
            raise ValueError("hot_fraction must be in (0, 1], got 0")
        _number("hot_share", self.hot_share, 0, 1)
        _number("seed", self.seed, 0, 2**63 - 1, integer=True)
        _number("bandwidth", self.bandwidth, 1, 2**62, integer=True)
        _number("downtime_limit", self.downtime_limit, 0.001, 2000.0)
        for name in ("auto_converge", "xbzrle", "multifd", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError("%s must be True or False, got %r" % (name, getattr(self, name)))
        _number("throttle_initial", self.throttle_initial, 1, 99, integer=True)
        _number("throttle_increment", self.throttle_increment, 1, 100, integer=True)
        if self.accel not in ACCELS:
            raise ValueError("accel must be one of %s, got %r" % (", ".join(ACCELS), self.accel))
        if self.interface not in INTERFACES:
            raise ValueError("interface must be one of %s, got %r"
                             % (", ".join(INTERFACES), self.interface))
        if self.interface == "ring" and self.accel == "tcg":
            raise ValueError("interface 'ring' is KVM's dirty ring: it needs accel kvm or "
                             "auto, not tcg")
        _number("warmup", self.warmup, 0.2, 600)
        _number("timeout", self.timeout, 0.5, 3600)
        _number("port", self.port, 0, 65535, integer=True)
        _number("boot_timeout", self.boot_timeout, 0.5, 120)

    @property
    def npages(self):
        return (self.end - self.start) // PAGE

    def hot_pages(self):
        """Hot pages of the range (as the emulator's hotspot generator counts them)."""
        return max(1, min(self.npages, int(self.hot_fraction * self.npages + 0.5)))

    def params(self, tsc_hz=0):
        """The guest's parameter block. The guest draws its pages with the
        emulator's page draws (kvmdirty/page_draw.h) seeded as the emulator's
        vCPU 0 of this workload, so the two write the same pages."""
        from ..migration.workloads import hot_threshold, vcpu_seed
        hot = self.workload == "hotspot"
        return layout.pack_params(self.workload, self.start, self.end, self.rate,
                                  vcpu_seed(self.seed, 0), self.hot_pages() if hot else 0,
                                  hot_threshold(self.hot_share) if hot else 0, tsc_hz)

    def as_dict(self):
        return asdict(self)
