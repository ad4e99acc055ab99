"""Per-vCPU dirty rings (KVM_CAP_DIRTY_LOG_RING): harvest, the ring memory as a
numpy view, KVM_RESET_DIRTY_RINGS and the fill level. Mixed into VM."""
from typing import TYPE_CHECKING, Any

import numpy as np

from .._native import ffi, lib
from ..errors import KvmDirtyError, check
from .boundary import uint_arg, view
from .constants import DIRTY_GFN_DTYPE


class RingMethods:
    """The dirty-ring calls of VM (needs ``handle``, ``ring_entries`` and
    ``slot_info`` from the VM)."""

    if TYPE_CHECKING:  # provided by VM
        ring_entries: int
        handle: Any

        def slot_info(self, slot: int) -> Any: ...

    def harvest(self, vcpu=0, gfns=False):
        """Harvest vCPU's DIRTY ring entries in order (setting RESET on each).
        Returns a structured array (flags, slot, offset), or gfns if asked."""
        vcpu = uint_arg(vcpu, "vcpu", 32)
        cap = max(self.ring_entries, 1)
        out = np.empty(cap, dtype=DIRTY_GFN_DTYPE)
        count = ffi.new("uint64_t *")
        check(lib.kd_ring_harvest(self.handle, vcpu,
                                  ffi.cast("struct kd_dirty_gfn *", ffi.from_buffer(out)),
                                  cap, count),
              "harvest(vcpu=%d)" % vcpu)
        entries = out[:count[0]]
        if not gfns:
            return entries
        return self.entries_to_gfns(entries)

    def entries_to_gfns(self, entries):
        """gfns of ring entries: base_gfn of their slot + offset (vectorised per
        slot). An entry naming a slot that no longer exists (deleted after the
        write) raises KvmDirtyError naming it: its gfn is unknowable."""
        out = np.empty(entries.size, dtype=np.uint64)
        for slot in np.unique(entries["slot"]):
            sel = entries["slot"] == slot
            try:
                base = self.slot_info(int(slot)).base_gfn
            except KvmDirtyError as e:
                raise KvmDirtyError(e.errno, "ring entries name slot %#x, which does not "
                                    "exist (deleted after the write?): their gfns are "
                                    "unknown" % int(slot)) from None
            out[sel] = entries["offset"][sel] + np.uint64(base)
        return out

    def ring(self, vcpu=0):
        """The vCPU's ring memory as a structured numpy view (what KVM mmaps).
        The view keeps the C VM alive (its memory stays valid after close())."""
        vcpu = uint_arg(vcpu, "vcpu", 32)
        ptr = ffi.new("struct kd_dirty_gfn **")
        n = ffi.new("uint32_t *")
        handle = self.handle
        check(lib.kd_ring_entries(handle, vcpu, ptr, n), "ring(vcpu=%d)" % vcpu)
        return view(handle, ptr[0], n[0], DIRTY_GFN_DTYPE)

    def reset_dirty_rings(self):
        """KVM_RESET_DIRTY_RINGS: recycle harvested entries; returns how many."""
        count = ffi.new("uint64_t *")
        check(lib.kd_reset_dirty_rings(self.handle, count), "reset_dirty_rings()")
        return count[0]

    def ring_usage(self, vcpu=0):
        """(entries used, soft limit) of a vCPU's ring."""
        vcpu = uint_arg(vcpu, "vcpu", 32)
        used = ffi.new("uint32_t *")
        limit = ffi.new("uint32_t *")
        check(lib.kd_ring_usage(self.handle, vcpu, used, limit), "ring_usage(vcpu=%d)" % vcpu)
        return used[0], limit[0]
