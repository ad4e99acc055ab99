"""The test guest's memory layout and its host-side parameter/status blocks.

The single source of the addresses the firmware (guest/boot.S, guest/guest.c)
is built with (passed as -D flags) and of the two blocks the host and the
guest share:

- params (PARAMS_ADDR): what the guest runs, packed by :func:`pack_params` and
  placed by QEMU's generic loader (``-device loader,file=...,addr=...``)
  before the vCPU starts;
- status (STATUS_ADDR): what the guest has done, parsed by
  :func:`parse_status` from the bytes the host reads back (QMP ``xp``).

Guest physical memory: params 0x1000, status 0x2000, CPL3 stack below
0x8000, CPL0 stack below 0xF000, payload code/data from 0x10000, page tables
from 0x20000 (identity map, 2 MiB user pages, PT_GIB GiB). Workload ranges
start at 1 MiB or above and stay below 3 GiB (QEMU's pc machine puts RAM
above that at 4 GiB).
"""
import struct
from dataclasses import dataclass

from ..units import GiB, MiB

PAGE = 4096

PARAMS_ADDR = 0x1000
STATUS_ADDR = 0x2000
USTACK_TOP = 0x8000
STACK0_TOP = 0xF000
PAYLOAD_ADDR = 0x10000
PT_BASE = 0x20000
PT_GIB = 4                      # identity-mapped: the first 4 GiB
LOWMEM_LIMIT = 3 * GiB          # workload ranges end at or below this

BUILD_DEFINES = {
    "PARAMS_ADDR": PARAMS_ADDR, "STATUS_ADDR": STATUS_ADDR, "USTACK_TOP": USTACK_TOP,
    "STACK0_TOP": STACK0_TOP, "PAYLOAD_ADDR": PAYLOAD_ADDR, "PT_BASE": PT_BASE,
    "PT_GIB": PT_GIB,
}

PARAMS_MAGIC = 0x534D524150444B50   # "PKDPARMS" little-endian
STATUS_MAGIC = 0x5453544144444B50   # "PKDDATST"

WORKLOADS = {"idle": 0, "ab": 1, "uniform": 2, "hotspot": 3}
STATES = {1: "booting", 2: "running", 3: "bad-params"}

_PARAMS = struct.Struct("<9Q")
_STATUS = struct.Struct("<8Q")
STATUS_SIZE = _STATUS.size


@dataclass(frozen=True)
class GuestStatus:
    """One reading of the guest's status block."""
    valid: bool          # the guest has written its magic (it reached 64-bit CPL0)
    state: str           # booting, running, bad-params or unknown
    tsc_hz: int
    passes: int          # ab: completed sweeps; others: batches (idle: heartbeats)
    pages: int           # page writes so far
    tsc: int             # guest TSC at the last update
    tsc_start: int       # guest TSC when the workload started
    workload: str


def pack_params(workload, start=MiB, end=100 * MiB, rate=0, seed=1, hot_pages=0,
                hot_threshold=0, tsc_hz=0):
    """The parameter block for the guest (bytes). Page counts are in 4 KiB pages;
    rate in pages/s (0: unpaced, ab only); seed: the page draws' seed;
    hot_threshold: the hot share x 2^53; tsc_hz 0: the guest measures it."""
    return _PARAMS.pack(PARAMS_MAGIC, WORKLOADS[workload], start, end, int(rate), int(seed),
                        int(hot_pages), int(hot_threshold), int(tsc_hz))


def parse_status(data):
    """A :class:`GuestStatus` from the STATUS_SIZE bytes at STATUS_ADDR."""
    if len(data) != STATUS_SIZE:
        raise ValueError("status block must be %d bytes, got %d" % (STATUS_SIZE, len(data)))
    magic, state, tsc_hz, passes, pages, tsc, tsc_start, wl = _STATUS.unpack(data)
    names = {v: k for k, v in WORKLOADS.items()}
    return GuestStatus(magic == STATUS_MAGIC, STATES.get(state, "unknown") if
                       magic == STATUS_MAGIC else "not-started", tsc_hz, passes, pages, tsc,
                       tsc_start, names.get(wl, "unknown"))
