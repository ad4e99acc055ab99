"""VM: a thin Python wrapper over libkvmdirty's kd_vm.

Every method checks its Python arguments (raising ValueError/TypeError naming
the bad value before C is called), makes one C call per operation, checks its
return code (KvmDirtyError carrying the kernel's errno) and moves arrays in and
out as numpy buffers that C reads or fills in place: no per-page Python loops.
"""
import collections
import operator

import numpy as np

from ._native import ffi, lib
from .errors import check

BACKENDS = {
    "flat": lib.KD_BACKEND_FLAT,
    "twolevel": lib.KD_BACKEND_TWOLEVEL,
    "bytemap": lib.KD_BACKEND_BYTEMAP,
    "ring": lib.KD_BACKEND_RING,
    "kvm": lib.KD_BACKEND_KVM,
    "uffd": lib.KD_BACKEND_UFFD,
    "hier": lib.KD_BACKEND_HIER,
}
EMULATED_BACKENDS = ("flat", "twolevel", "bytemap", "ring", "hier")
TRACKING = {"write_protect": lib.KD_TRACK_WRITE_PROTECT, "pml": lib.KD_TRACK_PML,
            "uffd_sync": lib.KD_TRACK_UFFD_SYNC, "mprotect": lib.KD_TRACK_MPROTECT}

MEM_LOG_DIRTY_PAGES = lib.KD_MEM_LOG_DIRTY_PAGES
MEM_READONLY = lib.KD_MEM_READONLY
MANUAL_PROTECT_ENABLE = lib.KD_MANUAL_PROTECT_ENABLE
INITIALLY_SET = lib.KD_INITIALLY_SET
DIRTY_GFN_F_DIRTY = lib.KD_DIRTY_GFN_F_DIRTY
DIRTY_GFN_F_RESET = lib.KD_DIRTY_GFN_F_RESET
EXIT_NONE = lib.KD_EXIT_NONE
EXIT_DIRTY_RING_FULL = lib.KD_EXIT_DIRTY_RING_FULL
PAGE_SIZE = lib.KD_PAGE_SIZE
PAGE_SHIFT = lib.KD_PAGE_SHIFT
CHUNK_PAGES = lib.KD_CHUNK_PAGES
USER_MEM_SLOTS = lib.KD_USER_MEM_SLOTS

#: numpy view of struct kvm_dirty_gfn {u32 flags; u32 slot; u64 offset;}
DIRTY_GFN_DTYPE = np.dtype([("flags", "<u4"), ("slot", "<u4"), ("offset", "<u8")])
assert DIRTY_GFN_DTYPE.itemsize == ffi.sizeof("struct kd_dirty_gfn") == 16

STAT_FIELDS = tuple(
    name for name, _ in ffi.typeof("struct kd_stats").fields if name != "reserved")

WriteResult = collections.namedtuple("WriteResult", "applied exit_reason")
WriteResult.__doc__ = """What a kd_write did: gfns applied in order, and the exit reason
(EXIT_NONE, or EXIT_DIRTY_RING_FULL when the vCPU's ring reached its soft limit)."""
WriteResult.ring_full = property(lambda self: self.exit_reason == EXIT_DIRTY_RING_FULL)

SlotInfo = collections.namedtuple("SlotInfo", "slot flags base_gfn npages")


def backend_available(backend):
    """(True, None) if the backend runs here, else (False, reason)."""
    if backend not in BACKENDS:
        raise ValueError("unknown backend %r; choose from %s" % (backend, ", ".join(BACKENDS)))
    why = ffi.new("const char **")
    rc = lib.kd_backend_available(BACKENDS[backend], why)
    return rc == 0, (ffi.string(why[0]).decode() if why[0] != ffi.NULL else None)


def _uint(value, name, bits=64):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError("%s must be an integer, got %r" % (name, value)) from None
    if v < 0 or v >> bits:
        raise ValueError("%s must be in [0, 2**%d), got %d" % (name, bits, v))
    return v


def as_gfn_array(gfns, name="gfns"):
    """gfns as a C-contiguous uint64 array (no copy if it already is one)."""
    if isinstance(gfns, np.ndarray):
        arr = gfns
    elif np.isscalar(gfns) or isinstance(gfns, int):
        arr = np.array([_uint(gfns, name)], dtype=np.uint64)
    else:
        arr = np.asarray(gfns)
        if arr.size == 0:
            arr = arr.astype(np.uint64)
    if arr.ndim != 1:
        raise ValueError("%s must be one-dimensional, got shape %s" % (name, arr.shape))
    if arr.dtype != np.uint64:
        if arr.dtype.kind not in "iu":
            raise TypeError("%s must hold integers, got dtype %s" % (name, arr.dtype))
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError("%s must be non-negative, got %d" % (name, int(arr.min())))
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def _u64_ptr(arr):
    return ffi.from_buffer("uint64_t[]", arr, require_writable=False)


class VM:
    """A VM with memslots, vCPUs and one dirty-log backend.

    backend: "flat" (KVM_GET_DIRTY_LOG), "twolevel" (summary bit per 2 MiB),
    "bytemap" (QEMU 2010), "ring" (per-vCPU dirty rings), "kvm" (the real
    kernel) or "uffd" (userfaultfd write-protect on real memory).
    dirty_tracking: "write_protect" or "pml" (emulated backends); on "uffd",
    "write_protect" is userfaultfd WP_ASYNC + PAGEMAP_SCAN and the fallbacks
    "uffd_sync" (a fault-handler thread) and "mprotect" (SIGSEGV) compare with it.
    o1_protect: count re-protection of enable/classic GET as one generation bump.
    guest_memory: back slots with memory; writes store their value into the page.
    address_spaces: 1 or 2 (x86 with SMM, the default); on "kvm" the kernel decides.
    """

    def __init__(self, backend="flat", vcpus=1, ring_entries=None,
                 dirty_tracking="write_protect", o1_protect=False, guest_memory=False,
                 address_spaces=None):
        if backend not in BACKENDS:
            raise ValueError("unknown backend %r; choose from %s" % (backend, ", ".join(BACKENDS)))
        if dirty_tracking not in TRACKING:
            raise ValueError("unknown dirty_tracking %r; choose from %s"
                             % (dirty_tracking, ", ".join(TRACKING)))
        vcpus = _uint(vcpus, "vcpus", 32)
        if not 1 <= vcpus <= lib.KD_MAX_VCPUS:
            raise ValueError("vcpus must be in [1, %d], got %d" % (lib.KD_MAX_VCPUS, vcpus))
        if ring_entries is None:
            ring_entries = 4096 if backend == "ring" else 0
        ring_entries = _uint(ring_entries, "ring_entries", 32)
        if backend not in ("ring", "kvm") and ring_entries:
            raise ValueError("ring_entries applies to the ring and kvm backends, not %r" % backend)
        if address_spaces is not None:
            address_spaces = _uint(address_spaces, "address_spaces", 32)
            if not 1 <= address_spaces <= lib.KD_ADDRESS_SPACES:
                raise ValueError("address_spaces must be in [1, %d], got %d"
                                 % (lib.KD_ADDRESS_SPACES, address_spaces))
        self._handle = ffi.NULL
        cfg = ffi.new("struct kd_vm_config *")
        cfg.address_spaces = address_spaces or 0
        cfg.backend = BACKENDS[backend]
        cfg.nvcpus = vcpus
        cfg.ring_entries = ring_entries
        cfg.tracking = TRACKING[dirty_tracking]
        cfg.flags = ((lib.KD_VM_O1_PROTECT if o1_protect else 0)
                     | (lib.KD_VM_GUEST_MEMORY if guest_memory else 0))
        out = ffi.new("kd_vm **")
        if backend in ("kvm", "uffd"):
            ok, why = backend_available(backend)
            if not ok:
                from .errors import KvmDirtyError
                import errno
                raise KvmDirtyError(errno.ENODEV, "backend %r unavailable: %s" % (backend, why))
        check(lib.kd_vm_create(cfg, out),
              "kd_vm_create(backend=%r, vcpus=%d, ring_entries=%d, dirty_tracking=%r)"
              % (backend, vcpus, ring_entries, dirty_tracking))
        self._handle = out[0]
        check(lib.kd_vm_config_get(self._handle, cfg), "kd_vm_config_get")
        #: address spaces (slot bits 16-31); 2 on emulated x86, the kernel's on kvm
        self.address_spaces = cfg.address_spaces
        self.backend = backend
        self.vcpus = vcpus
        self.ring_entries = ring_entries
        self.dirty_tracking = dirty_tracking
        self.guest_memory = bool(guest_memory) or backend in ("kvm", "uffd")
        self.last_collect_ns = None
        self._last_collect_count = 0
        self._npages = {}  # slot -> npages, kept by set_user_memory_region
        self._res = ffi.new("struct kd_collect_result *")
        self._wres = ffi.new("struct kd_write_result *")

    # -- lifetime ---------------------------------------------------------
    def close(self):
        if self._handle != ffi.NULL:
            lib.kd_vm_destroy(self._handle)
            self._handle = ffi.NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def handle(self):
        if self._handle == ffi.NULL:
            raise ValueError("VM is closed")
        return self._handle

    # -- memslots -----------------------------------------------------------
    def set_user_memory_region(self, slot, guest_phys_addr, memory_size, flags=0):
        """KVM_SET_USER_MEMORY_REGION (bytes, like KVM). memory_size 0 deletes."""
        slot = _uint(slot, "slot", 32)
        gpa = _uint(guest_phys_addr, "guest_phys_addr")
        size = _uint(memory_size, "memory_size")
        flags = _uint(flags, "flags", 32)
        check(lib.kd_set_user_memory_region(self.handle, slot, flags, gpa, size),
              "set_user_memory_region(slot=%#x, guest_phys_addr=%#x, memory_size=%#x, "
              "flags=%#x)" % (slot, gpa, size, flags))
        if size:
            self._npages[slot] = size >> PAGE_SHIFT
        else:
            self._npages.pop(slot, None)

    def slot_info(self, slot):
        slot = _uint(slot, "slot", 32)
        info = ffi.new("struct kd_slot_info *")
        check(lib.kd_slot_info(self.handle, slot, info), "slot_info(slot=%#x)" % slot)
        return SlotInfo(info.slot, info.flags, info.base_gfn, info.npages)

    def slots(self):
        n = check(lib.kd_slot_list(self.handle, ffi.NULL, 0), "slots()")
        buf = ffi.new("struct kd_slot_info[]", max(n, 1))
        n = check(lib.kd_slot_list(self.handle, buf, n), "slots()")
        return [SlotInfo(buf[i].slot, buf[i].flags, buf[i].base_gfn, buf[i].npages)
                for i in range(n)]

    def slot_memory(self, slot):
        """The slot's guest memory as a writable uint8 numpy view (no copy)."""
        slot = _uint(slot, "slot", 32)
        info = ffi.new("struct kd_slot_info *")
        check(lib.kd_slot_info(self.handle, slot, info), "slot_memory(slot=%#x)" % slot)
        if info.memory == ffi.NULL:
            raise ValueError("slot %#x has no guest memory (create the VM with "
                             "guest_memory=True)" % slot)
        buf = ffi.buffer(info.memory, info.npages * PAGE_SIZE)
        return np.frombuffer(buf, dtype=np.uint8)

    def enable_manual_protect(self, initially_set=False):
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, CLEAR re-protects."""
        flags = MANUAL_PROTECT_ENABLE | (INITIALLY_SET if initially_set else 0)
        self.enable_manual_protect_flags(flags)

    def enable_manual_protect_flags(self, flags):
        flags = _uint(flags, "flags")
        check(lib.kd_enable_manual_protect(self.handle, flags),
              "enable_manual_protect(flags=%#x)" % flags)

    # -- guest side -------------------------------------------------------
    def write(self, gfns, vcpu=0, value=0):
        """vCPU `vcpu` writes `value` to each gfn in order (one C call).

        Returns WriteResult(applied, exit_reason); a ring VM stops after the
        write that fills a vCPU's ring to its soft limit.
        """
        arr = as_gfn_array(gfns)
        vcpu = _uint(vcpu, "vcpu", 32)
        if vcpu >= self.vcpus:
            raise ValueError("vcpu must be below %d, got %d" % (self.vcpus, vcpu))
        value = _uint(value, "value")
        check(lib.kd_write(self.handle, vcpu, _u64_ptr(arr), arr.size, value, self._wres),
              "write(%d gfns, vcpu=%d)", (arr.size, vcpu))
        return WriteResult(self._wres.applied, self._wres.exit_reason)

    # -- KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG ----------------------------
    def get_dirty_log(self, slot):
        """The slot's bitmap in KVM layout (uint64 words, bit i = page base+i)."""
        slot = _uint(slot, "slot", 32)
        nwords = (self._npages.get(slot, 0) + 63) // 64  # no slot: C names the errno
        bitmap = np.empty(max(nwords, 1), dtype=np.uint64)  # C writes every word
        check(lib.kd_get_dirty_log(self.handle, slot, _u64_ptr(bitmap), nwords),
              "get_dirty_log(slot=%#x)", (slot,))
        return bitmap[:nwords]

    def clear_dirty_log(self, slot, first_page, num_pages, bitmap=None):
        """KVM_CLEAR_DIRTY_LOG: clear and re-protect the pages set in bitmap
        (bit i = page first_page + i); bitmap None clears every page of the range."""
        slot = _uint(slot, "slot", 32)
        first_page = _uint(first_page, "first_page")
        num_pages = _uint(num_pages, "num_pages", 32)
        nwords = (num_pages + 63) // 64
        if bitmap is None:
            bitmap = np.full(nwords, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        bitmap = np.ascontiguousarray(bitmap)
        if bitmap.dtype != np.uint64:
            raise TypeError("bitmap must be uint64, got dtype %s" % bitmap.dtype)
        if bitmap.ndim != 1 or bitmap.size < nwords:
            raise ValueError("bitmap must hold ALIGN(num_pages, 64) / 64 = %d words, got "
                             "shape %s" % (nwords, bitmap.shape))
        ptr = _u64_ptr(bitmap) if bitmap.size else ffi.NULL
        check(lib.kd_clear_dirty_log(self.handle, slot, first_page, num_pages, ptr),
              "clear_dirty_log(slot=%#x, first_page=%d, num_pages=%d)"
              % (slot, first_page, num_pages))

    # -- collect ----------------------------------------------------------
    def collect(self, slot, first_page=0, num_pages=None):
        """Collect and clear (re-protect) the dirty pages of a slot or a range
        of it; returns their sorted gfns as uint64. ``last_collect_ns`` is the
        CLOCK_MONOTONIC time at which the log was sampled."""
        slot = _uint(slot, "slot", 32)
        first_page = _uint(first_page, "first_page")
        if num_pages is None:
            npages = self._npages.get(slot)
            if npages is None:  # no such slot: let C name the errno
                npages = first_page
            if npages < first_page:
                raise ValueError("first_page %d is past the end of slot %#x (%d pages)"
                                 % (first_page, slot, npages))
            num_pages = npages - first_page
        num_pages = _uint(num_pages, "num_pages")
        end = first_page + num_pages
        # Size the output from the last result: small collects stay cheap,
        # large ones grow (C resumes where the buffer filled).
        size = min(max(num_pages, 64), max(1024, 2 * self._last_collect_count))
        buf = np.empty(size, dtype=np.uint64)
        ptr = ffi.from_buffer("uint64_t[]", buf)
        n = 0
        res = self._res
        start = first_page
        while True:
            check(lib.kd_collect(self._handle, slot, start, end - start, ptr + n, size - n, res),
                  "collect(slot=%#x, first_page=%d, num_pages=%d)",
                  (slot, first_page, num_pages))
            if start == first_page:
                self.last_collect_ns = res.sampled_ns
            n += res.count
            if res.resume_page >= end:
                break
            start = res.resume_page
            size *= 2
            grown = np.empty(size, dtype=np.uint64)
            grown[:n] = buf[:n]
            buf = grown
            ptr = ffi.from_buffer("uint64_t[]", buf)
        self._last_collect_count = n
        return buf[:n]

    # -- dirty ring ---------------------------------------------------------
    def harvest(self, vcpu=0, gfns=False):
        """Harvest vCPU's DIRTY ring entries in order (setting RESET on each).
        Returns a structured array (flags, slot, offset), or gfns if asked."""
        vcpu = _uint(vcpu, "vcpu", 32)
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
        """gfns of ring entries: base_gfn of their slot + offset (vectorised per slot)."""
        out = np.empty(entries.size, dtype=np.uint64)
        for slot in np.unique(entries["slot"]):
            sel = entries["slot"] == slot
            try:
                base = self.slot_info(int(slot)).base_gfn
            except OSError:
                base = 0
            out[sel] = entries["offset"][sel] + np.uint64(base)
        return out

    def ring(self, vcpu=0):
        """The vCPU's ring memory as a structured numpy view (what KVM mmaps)."""
        vcpu = _uint(vcpu, "vcpu", 32)
        ptr = ffi.new("struct kd_dirty_gfn **")
        n = ffi.new("uint32_t *")
        check(lib.kd_ring_entries(self.handle, vcpu, ptr, n), "ring(vcpu=%d)" % vcpu)
        buf = ffi.buffer(ptr[0], n[0] * 16)
        return np.frombuffer(buf, dtype=DIRTY_GFN_DTYPE)

    def reset_dirty_rings(self):
        """KVM_RESET_DIRTY_RINGS: recycle harvested entries; returns how many."""
        count = ffi.new("uint64_t *")
        check(lib.kd_reset_dirty_rings(self.handle, count), "reset_dirty_rings()")
        return count[0]

    def ring_usage(self, vcpu=0):
        """(entries used, soft limit) of a vCPU's ring."""
        vcpu = _uint(vcpu, "vcpu", 32)
        used = ffi.new("uint32_t *")
        limit = ffi.new("uint32_t *")
        check(lib.kd_ring_usage(self.handle, vcpu, used, limit), "ring_usage(vcpu=%d)" % vcpu)
        return used[0], limit[0]

    # -- counters -----------------------------------------------------------
    @property
    def stats(self):
        """Event counters (dict): what the kernel and the user side paid."""
        st = ffi.new("struct kd_stats *")
        check(lib.kd_stats_get(self.handle, st), "stats")
        return {name: getattr(st, name) for name in STAT_FIELDS}

    def reset_stats(self):
        check(lib.kd_stats_reset(self.handle), "reset_stats()")

    def __repr__(self):
        return "<VM backend=%s vcpus=%d>" % (self.backend, self.vcpus)
