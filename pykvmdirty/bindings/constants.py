"""Constants of the public header (kvmdirty.h), read from the compiled library:
no number of the header is repeated in Python."""
import numpy as np

from .._native import ffi, lib


def _registered_backends():
    """name -> enum kd_backend for every backend the library registers
    (vm/backends.c), asked of the library by kd_backend_name: a backend added
    in C appears here without a Python edit. The enum has no gaps; the scan
    stops at the first unregistered number."""
    out = {}
    for number in range(256):
        name = lib.kd_backend_name(number)
        if name == ffi.NULL:
            break
        out[ffi.string(name).decode()] = number
    return out


BACKENDS = _registered_backends()
#: backends whose VM runs on the host's real memory and kernel
REAL_BACKENDS = ("kvm", "uffd")
#: backends emulated in C on anonymous memory (every registered one that is not real)
EMULATED_BACKENDS = tuple(b for b in BACKENDS if b not in REAL_BACKENDS)
#: backends with per-vCPU dirty rings (ring_entries applies)
RING_BACKENDS = ("ring", "kvm")
TRACKING = {"write_protect": lib.KD_TRACK_WRITE_PROTECT, "pml": lib.KD_TRACK_PML,
            "uffd_sync": lib.KD_TRACK_UFFD_SYNC, "mprotect": lib.KD_TRACK_MPROTECT}

PAGE_SIZE = int(lib.KD_PAGE_SIZE)
PAGE_SHIFT = int(lib.KD_PAGE_SHIFT)
CHUNK_PAGES = int(lib.KD_CHUNK_PAGES)
MAX_SLOT_PAGES = int(lib.KD_MAX_SLOT_PAGES)
USER_MEM_SLOTS = int(lib.KD_USER_MEM_SLOTS)
ADDRESS_SPACES = int(lib.KD_ADDRESS_SPACES)
MAX_VCPUS = int(lib.KD_MAX_VCPUS)
MAX_GFN = int(lib.KD_MAX_GFN)

MEM_LOG_DIRTY_PAGES = int(lib.KD_MEM_LOG_DIRTY_PAGES)
MEM_READONLY = int(lib.KD_MEM_READONLY)
MANUAL_PROTECT_ENABLE = int(lib.KD_MANUAL_PROTECT_ENABLE)
INITIALLY_SET = int(lib.KD_INITIALLY_SET)
VM_O1_PROTECT = int(lib.KD_VM_O1_PROTECT)
VM_GUEST_MEMORY = int(lib.KD_VM_GUEST_MEMORY)
VM_PAGE_VERSIONS = int(lib.KD_VM_PAGE_VERSIONS)
#: how guest memory is kept: real 4 KiB pages, or one 64-bit version per page
#: (the content-free model: 0 = a zero page; a write stores a new version)
PAGE_MODELS = ("contents", "versions")

DIRTY_GFN_F_DIRTY = int(lib.KD_DIRTY_GFN_F_DIRTY)
DIRTY_GFN_F_RESET = int(lib.KD_DIRTY_GFN_F_RESET)
RING_RESERVED_ENTRIES = int(lib.KD_RING_RESERVED_ENTRIES)
RING_MAX_ENTRIES = int(lib.KD_RING_MAX_ENTRIES)
EXIT_NONE = int(lib.KD_EXIT_NONE)
EXIT_DIRTY_RING_FULL = int(lib.KD_EXIT_DIRTY_RING_FULL)

#: numpy view of struct kvm_dirty_gfn {u32 flags; u32 slot; u64 offset;}
DIRTY_GFN_DTYPE = np.dtype([("flags", "<u4"), ("slot", "<u4"), ("offset", "<u8")])
DIRTY_GFN_SIZE = ffi.sizeof("struct kd_dirty_gfn")
if DIRTY_GFN_DTYPE.itemsize != DIRTY_GFN_SIZE:  # an ABI change the dtype must follow
    raise ImportError("struct kd_dirty_gfn is %d bytes, the numpy dtype %d"
                      % (DIRTY_GFN_SIZE, DIRTY_GFN_DTYPE.itemsize))

#: VM.stats fields: every counter of struct kd_stats
STAT_FIELDS = tuple(
    name for name, _ in ffi.typeof("struct kd_stats").fields if name != "reserved")

# wire format (csrc/include/kvmdirty/migrate.h)
WIRE_BATCH_HEADER = int(lib.KD_WIRE_BATCH_HEADER)
WIRE_PAGE_RECORD = int(lib.KD_WIRE_PAGE_RECORD)
WIRE_ZERO_RECORD = int(lib.KD_WIRE_ZERO_RECORD)
WIRE_MAX_PAYLOAD = int(lib.KD_WIRE_MAX_PAYLOAD)
WIRE_MAX_REGIONS = int(lib.KD_WIRE_MAX_REGIONS)
WIRE_MEM_SIZE = int(lib.KD_WIRE_MEM_SIZE)  # the record flag that opens a stream

# sender (csrc/migrate/sendpath.c): kd_send_pages results and flags
SEND_DONE = int(lib.KD_SEND_DONE)
SEND_FULL = int(lib.KD_SEND_FULL)
SEND_TIME_CAP = int(lib.KD_SEND_TIME_CAP)
SEND_DEADLINE = int(lib.KD_SEND_DEADLINE)
SEND_RATE_LIMITED = int(lib.KD_SEND_RATE_LIMITED)
SEND_WINDOW_NS = int(lib.KD_SEND_WINDOW_NS)
LAT_BUCKETS = int(lib.KD_LAT_BUCKETS)

# workload generators (csrc/migrate/workload.c)
WORKLOAD_KINDS = {
    "idle": lib.KD_WL_IDLE,
    "uniform": lib.KD_WL_UNIFORM,
    "hotspot": lib.KD_WL_HOTSPOT,
    "zipf": lib.KD_WL_ZIPF,
    "sequential": lib.KD_WL_SEQUENTIAL,
    "migration-test": lib.KD_WL_MIGRATION_TEST,
}

VERSION = ffi.string(lib.kd_version()).decode()
