"""pykvmdirty: a dirty-page-tracking kernel-interface emulator.

C core (libkvmdirty, through cffi): memslots, guest writes through a
write-protection or PML model, and dirty logs with KVM semantics (flat
KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG, the two-level log proposed in 2010,
the hierarchical log, QEMU's 2010 byte map, per-vCPU dirty rings, the real
/dev/kvm and userfaultfd write-protection; BACKENDS names them all). Python
wires them into benchmarks and a live-migration scan-and-send loop.
"""
from .bindings.constants import (
    BACKENDS, CHUNK_PAGES, DIRTY_GFN_DTYPE, DIRTY_GFN_F_DIRTY, DIRTY_GFN_F_RESET,
    EMULATED_BACKENDS, EXIT_DIRTY_RING_FULL, EXIT_NONE, INITIALLY_SET, MANUAL_PROTECT_ENABLE,
    MEM_LOG_DIRTY_PAGES, MEM_READONLY, PAGE_SHIFT, PAGE_SIZE, USER_MEM_SLOTS, VERSION,
)
from .bindings.boundary import as_gfn_array
from .bindings.vm import VM, LogMemory, SlotInfo, WriteResult, backend_available
from .bindings.writers import Writers
from .errors import KvmDirtyError
from .migration import migrate

__version__ = VERSION

__all__ = [
    "VM", "Writers", "migrate", "KvmDirtyError", "WriteResult", "SlotInfo", "LogMemory",
    "backend_available",
    "as_gfn_array", "BACKENDS", "EMULATED_BACKENDS", "CHUNK_PAGES", "DIRTY_GFN_DTYPE",
    "DIRTY_GFN_F_DIRTY", "DIRTY_GFN_F_RESET", "EXIT_DIRTY_RING_FULL", "EXIT_NONE",
    "INITIALLY_SET", "MANUAL_PROTECT_ENABLE", "MEM_LOG_DIRTY_PAGES", "MEM_READONLY",
    "PAGE_SHIFT", "PAGE_SIZE", "USER_MEM_SLOTS",
]
