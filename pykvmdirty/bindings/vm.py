"""VM: the Python face of libkvmdirty's kd_vm (memslots, guest writes, dirty
logs, collect, counters; the dirty-ring calls are in ring.py).

Every method checks its Python arguments (raising ValueError/TypeError naming
the bad value before C is called), makes one C call per operation, checks its
return code (KvmDirtyError carrying the kernel's errno) and moves arrays in and
out as numpy buffers that C reads or fills in place: no per-page Python loops.

Threads: like the C API, one VM may be used from several Python threads (one
writer per vCPU, any number of collectors): every call allocates its own
result struct, nothing per call is stored on the VM.

Lifetime (invariants):
- the kd_vm is owned by ``self._native`` (an ``ffi.gc`` handle); numpy views
  of its memory (slot_memory, ring) keep that handle alive, so ``close()``
  makes the VM unusable at once but frees the C memory only when the last
  view is gone;
- thread pools writing into the VM (Writers, workload threads) register in
  ``self._pools``; ``close()`` stops and joins them (from any thread, any
  number of times: each call returns once they are joined), a pool started
  after close() is refused, and deleting a slot while one runs is refused
  (EBUSY);
- deleting a slot whose memory has a live numpy view is refused (EBUSY).
"""
import collections
import errno
import threading
import weakref
from typing import Any, Dict

import numpy as np

from .._native import ffi, lib
from ..errors import KvmDirtyError, check
from .boundary import as_gfn_array, owner_of, u64_ptr, uint_arg, view
from .constants import (
    ADDRESS_SPACES, BACKENDS, EXIT_DIRTY_RING_FULL, INITIALLY_SET, MANUAL_PROTECT_ENABLE,
    MAX_VCPUS, MEM_LOG_DIRTY_PAGES, PAGE_MODELS, PAGE_SIZE, REAL_BACKENDS, RING_BACKENDS,
    STAT_FIELDS, TRACKING, VM_GUEST_MEMORY, VM_O1_PROTECT, VM_PAGE_VERSIONS,
)
from .ring import RingMethods


class WriteResult(collections.namedtuple("WriteResult", "applied exit_reason")):
    """What a kd_write did: gfns applied in order, and the exit reason
    (EXIT_NONE, or EXIT_DIRTY_RING_FULL when the vCPU's ring reached its soft limit)."""
    __slots__ = ()

    @property
    def ring_full(self):
        return self.exit_reason == EXIT_DIRTY_RING_FULL


#: the write-side events a kd_write reports for its own call (struct kd_write_result)
WRITE_EVENTS = ("write_faults", "pml_entries", "pml_flushes", "ring_pushes", "ring_full_exits")


def write_events(res):
    """{event: count} of a struct kd_write_result (this call, this vCPU)."""
    return {k: getattr(res, k) for k in WRITE_EVENTS}


SlotInfo = collections.namedtuple("SlotInfo", "slot flags base_gfn npages")
# Bytes a slot's dirty log holds in this process: address space reserved and
# pages resident (kd_log_memory).
LogMemory = collections.namedtuple("LogMemory", "reserved resident")


def backend_available(backend):
    """(True, None) if the backend runs here, else (False, reason)."""
    if backend not in BACKENDS:
        raise ValueError("unknown backend %r; choose from %s" % (backend, ", ".join(BACKENDS)))
    why = ffi.new("const char **")
    rc = lib.kd_backend_available(BACKENDS[backend], why)
    return rc == 0, (ffi.string(why[0]).decode() if why[0] != ffi.NULL else None)



def _grown(buf, n):
    """A collect output twice as large holding buf[:n], and its C pointer."""
    grown = np.empty(2 * buf.size, dtype=np.uint64)
    grown[:n] = buf[:n]
    return grown, u64_ptr(grown, True)

class VM(RingMethods):
    """A VM with memslots, vCPUs and one dirty-log backend.

    backend: "flat" (KVM_GET_DIRTY_LOG), "twolevel" (summary bit per 2 MiB),
    "hier" (64-ary summaries over 2 MiB chunks, leaves in a lazily backed
    pool), "bytemap" (QEMU 2010), "ring" (per-vCPU dirty rings), "kvm" (the
    real kernel) or "uffd" (userfaultfd write-protect on real memory); every
    name is in BACKENDS.
    dirty_tracking: "write_protect" or "pml" (emulated backends); on "uffd",
    "write_protect" is userfaultfd WP_ASYNC + PAGEMAP_SCAN and the fallbacks
    "uffd_sync" (a fault-handler thread) and "mprotect" (SIGSEGV) compare with it.
    o1_protect: count re-protection of enable/classic GET as one generation bump.
    guest_memory: back slots with memory; writes store their value into the page.
    address_spaces: 1 or 2 (x86 with SMM, the default); on "kvm" the kernel decides.
    """

    def __init__(self, backend="flat", vcpus=1, ring_entries=None,
                 dirty_tracking="write_protect", o1_protect=False, guest_memory=False,
                 address_spaces=None, page_model="contents"):
        self._native = None
        # running thread pools (Writers, workloads); slot -> live CMemory views
        self._pools: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._slot_views: "Dict[int, weakref.WeakSet[Any]]" = {}
        self._lock = threading.Lock()        # guards _slot_views, _pools
        if backend not in BACKENDS:
            raise ValueError("unknown backend %r; choose from %s" % (backend, ", ".join(BACKENDS)))
        if dirty_tracking not in TRACKING:
            raise ValueError("unknown dirty_tracking %r; choose from %s"
                             % (dirty_tracking, ", ".join(TRACKING)))
        vcpus = uint_arg(vcpus, "vcpus", 32)
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError("vcpus must be in [1, %d], got %d" % (MAX_VCPUS, vcpus))
        if ring_entries is None:
            ring_entries = 4096 if backend == "ring" else 0
        ring_entries = uint_arg(ring_entries, "ring_entries", 32)
        if backend not in RING_BACKENDS and ring_entries:
            raise ValueError("ring_entries applies to the ring and kvm backends, not %r" % backend)
        if address_spaces is not None:
            address_spaces = uint_arg(address_spaces, "address_spaces", 32)
            if not 1 <= address_spaces <= ADDRESS_SPACES:
                raise ValueError("address_spaces must be in [1, %d], got %d"
                                 % (ADDRESS_SPACES, address_spaces))
        if page_model not in PAGE_MODELS:
            raise ValueError("unknown page_model %r; choose from %s"
                             % (page_model, ", ".join(PAGE_MODELS)))
        if page_model == "versions" and (backend in REAL_BACKENDS or not guest_memory):
            raise ValueError("page_model 'versions' needs guest_memory=True and an emulated "
                             "backend (the %r backend tracks real pages)" % backend
                             if backend in REAL_BACKENDS else
                             "page_model 'versions' needs guest_memory=True")
        if backend in REAL_BACKENDS:
            ok, why = backend_available(backend)
            if not ok:
                raise KvmDirtyError(errno.ENODEV, "backend %r unavailable: %s" % (backend, why))
        cfg = ffi.new("struct kd_vm_config *")
        cfg.address_spaces = address_spaces or 0
        cfg.backend = BACKENDS[backend]
        cfg.nvcpus = vcpus
        cfg.ring_entries = ring_entries
        cfg.tracking = TRACKING[dirty_tracking]
        cfg.flags = ((VM_O1_PROTECT if o1_protect else 0)
                     | (VM_GUEST_MEMORY if guest_memory else 0)
                     | (VM_PAGE_VERSIONS if page_model == "versions" else 0))
        out = ffi.new("kd_vm **")
        check(lib.kd_vm_create(cfg, out),
              "kd_vm_create(backend=%r, vcpus=%d, ring_entries=%d, dirty_tracking=%r)"
              % (backend, vcpus, ring_entries, dirty_tracking))
        self._native = ffi.gc(out[0], lib.kd_vm_destroy)
        check(lib.kd_vm_config_get(self._native, cfg), "kd_vm_config_get")
        #: address spaces (slot bits 16-31); 2 on emulated x86, the kernel's on kvm
        self.address_spaces = cfg.address_spaces
        self.backend = backend
        self.vcpus = vcpus
        self.ring_entries = ring_entries
        self.dirty_tracking = dirty_tracking
        self.guest_memory = bool(guest_memory) or backend in REAL_BACKENDS
        #: "contents" (4 KiB per page) or "versions" (a uint64 per page, 0 = zero page)
        self.page_model = page_model
        #: CLOCK_MONOTONIC time the log was sampled by the latest collect() to
        #: finish (with several collecting threads: whichever finished last)
        self.last_collect_ns = None
        self._collect_hint = 0  # size hint for collect's output (any thread's last)
        # No copy of any slot fact is kept here: another thread may change a
        # slot between two calls, so each call asks C (under its lock).

    # -- lifetime ---------------------------------------------------------
    def close(self):
        """Stop and join thread pools still writing, then let go of the C VM
        (freed now, or when the last numpy view of its memory is dropped)."""
        with self._lock:  # unusable at once; no pool can register after this
            self._native = None
            pools = list(self._pools)
        for pool in pools:  # safe from several threads: each returns once joined
            pool.stop_and_join()

    @property
    def closed(self):
        return self._native is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def handle(self):
        """The kd_vm * (for the other bindings modules); ValueError once closed."""
        native = self._native
        if native is None:
            raise ValueError("VM is closed")
        return native

    def register_pool(self, pool):
        """A thread pool (with stop_and_join()) now writes into this VM;
        ValueError if the VM was closed meanwhile (the pool must stop)."""
        with self._lock:
            if self._native is None:
                raise ValueError("VM is closed")
            self._pools.add(pool)

    def unregister_pool(self, pool):
        with self._lock:
            self._pools.discard(pool)

    def _check_no_pool(self, what):
        if any(p.running for p in list(self._pools)):
            raise KvmDirtyError(errno.EBUSY, "%s: writer threads are running on this VM; "
                                "stop and join them first" % what)

    # -- memslots -----------------------------------------------------------
    def set_user_memory_region(self, slot, guest_phys_addr, memory_size, flags=0):
        """KVM_SET_USER_MEMORY_REGION (bytes, like KVM). memory_size 0 deletes."""
        slot = uint_arg(slot, "slot", 32)
        gpa = uint_arg(guest_phys_addr, "guest_phys_addr")
        size = uint_arg(memory_size, "memory_size")
        flags = uint_arg(flags, "flags", 32)
        what = ("set_user_memory_region(slot=%#x, guest_phys_addr=%#x, memory_size=%#x, "
                "flags=%#x)" % (slot, gpa, size, flags))
        handle = self.handle
        with self._lock:
            self._check_no_pool(what)
            views = self._slot_views.get(slot)
            if size == 0 and views is not None and len(views):
                raise KvmDirtyError(errno.EBUSY, "%s: a numpy view of the slot's memory "
                                    "(slot_memory) or a SendRegion of the slot is still "
                                    "alive; drop it first" % what)
            check(lib.kd_set_user_memory_region(handle, slot, flags, gpa, size), what)
            if not size:
                self._slot_views.pop(slot, None)

    def _slot_info(self, slot, what):
        info = ffi.new("struct kd_slot_info *")
        check(lib.kd_slot_info(self.handle, slot, info), "%s(slot=%#x)" % (what, slot))
        return info

    def slot_info(self, slot):
        slot = uint_arg(slot, "slot", 32)
        info = self._slot_info(slot, "slot_info")
        return SlotInfo(info.slot, info.flags, info.base_gfn, info.npages)

    def log_memory(self, slot):
        """Bytes the slot's dirty log holds in this process (kd_log_memory):
        LogMemory(reserved, resident), resident = pages present now
        (mincore), what a lazily backed log has committed. The real
        backends' kernel memory (KVM's bitmaps) is not counted."""
        slot = uint_arg(slot, "slot", 32)
        out = ffi.new("struct kd_log_memory *")
        check(lib.kd_log_memory(self.handle, slot, out), "log_memory(slot=%#x)" % slot)
        return LogMemory(out.reserved, out.resident)

    def slots(self):
        n = check(lib.kd_slot_list(self.handle, ffi.NULL, 0), "slots()")
        buf = ffi.new("struct kd_slot_info[]", max(n, 1))
        n = check(lib.kd_slot_list(self.handle, buf, n), "slots()")
        return [SlotInfo(buf[i].slot, buf[i].flags, buf[i].base_gfn, buf[i].npages)
                for i in range(n)]

    def slot_memory(self, slot):
        """The slot's guest memory as a writable numpy view (no copy): uint8,
        4 KiB per page, or with page_model "versions" one uint64 version per
        page (0 = a zero page). The view keeps the C VM alive; the slot cannot
        be deleted while it lives."""
        slot = uint_arg(slot, "slot", 32)
        with self._lock:
            info = self._memory_info(slot)
            if self.page_model == "versions":
                arr = view(self._native, info.memory, info.npages, np.uint64)
            else:
                arr = view(self._native, info.memory, info.npages * PAGE_SIZE, np.uint8)
            self._slot_views.setdefault(slot, weakref.WeakSet()).add(owner_of(arr))
        return arr

    def _memory_info(self, slot):
        """The slot's info, ValueError if it has no guest memory (lock held)."""
        info = self._slot_info(slot, "slot_memory")
        if info.memory == ffi.NULL:
            raise ValueError("slot %#x has no guest memory (create the VM with "
                             "guest_memory=True)" % slot)
        return info

    def pin_slot_memory(self, slot, holder):
        """(void * to the slot's memory, npages) for the other bindings modules,
        valid while ``holder`` lives: deleting the slot is refused (EBUSY)
        until it is gone, as for a slot_memory() view. ValueError if the slot
        has no guest memory."""
        slot = uint_arg(slot, "slot", 32)
        with self._lock:
            info = self._memory_info(slot)
            self._slot_views.setdefault(slot, weakref.WeakSet()).add(holder)
            return info.memory, info.npages

    def enable_manual_protect(self, initially_set=False):
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, CLEAR re-protects."""
        flags = MANUAL_PROTECT_ENABLE | (INITIALLY_SET if initially_set else 0)
        self.enable_manual_protect_flags(flags)

    def enable_manual_protect_flags(self, flags):
        flags = uint_arg(flags, "flags")
        check(lib.kd_enable_manual_protect(self.handle, flags),
              "enable_manual_protect(flags=%#x)" % flags)

    # -- guest side -------------------------------------------------------
    def write(self, gfns, vcpu=0, value=0, events=None):
        """vCPU `vcpu` writes `value` to each gfn in order (one C call).

        Returns WriteResult(applied, exit_reason); a ring VM stops after the
        write that fills a vCPU's ring to its soft limit. events: a dict the
        call's write-side events (WRITE_EVENTS: faults, PML, ring pushes and
        exits, this call only) are added to.
        """
        arr = as_gfn_array(gfns)
        vcpu = uint_arg(vcpu, "vcpu", 32)
        if vcpu >= self.vcpus:
            raise ValueError("vcpu must be below %d, got %d" % (self.vcpus, vcpu))
        value = uint_arg(value, "value")
        res = ffi.new("struct kd_write_result *")
        check(lib.kd_write(self.handle, vcpu, u64_ptr(arr), arr.size, value, res),
              "write(%d gfns, vcpu=%d)", (arr.size, vcpu))
        if events is not None:
            for k in WRITE_EVENTS:
                events[k] = events.get(k, 0) + getattr(res, k)
        return WriteResult(res.applied, res.exit_reason)

    # -- KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG ----------------------------
    def get_dirty_log(self, slot):
        """The slot's bitmap in KVM layout (uint64 words, bit i = page base+i)."""
        slot = uint_arg(slot, "slot", 32)
        handle = self.handle
        size = ffi.new("uint64_t *")
        bitmap = np.empty(64, dtype=np.uint64)
        while True:  # C says the slot's size at the call: no stale copy
            rc = lib.kd_get_dirty_log_sized(handle, slot, u64_ptr(bitmap, True), bitmap.size,
                                            size)
            if rc == -errno.EFAULT and size[0] > bitmap.size:  # nothing taken
                bitmap = np.empty(size[0], dtype=np.uint64)
                continue
            check(rc, "get_dirty_log(slot=%#x)", (slot,))
            return bitmap[:size[0]]

    def clear_dirty_log(self, slot, first_page, num_pages, bitmap=None):
        """KVM_CLEAR_DIRTY_LOG: clear and re-protect the pages set in bitmap
        (bit i = page first_page + i); bitmap None clears every page of the range."""
        slot = uint_arg(slot, "slot", 32)
        first_page = uint_arg(first_page, "first_page")
        num_pages = uint_arg(num_pages, "num_pages", 32)
        nwords = (num_pages + 63) // 64
        if bitmap is None:
            bitmap = np.full(nwords, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        bitmap = np.ascontiguousarray(bitmap)
        if bitmap.dtype != np.uint64:
            raise TypeError("bitmap must be uint64, got dtype %s" % bitmap.dtype)
        if bitmap.ndim != 1 or bitmap.size < nwords:
            raise ValueError("bitmap must hold ALIGN(num_pages, 64) / 64 = %d words, got "
                             "shape %s" % (nwords, bitmap.shape))
        ptr = u64_ptr(bitmap) if bitmap.size else ffi.NULL
        check(lib.kd_clear_dirty_log(self.handle, slot, first_page, num_pages, ptr),
              "clear_dirty_log(slot=%#x, first_page=%d, num_pages=%d)"
              % (slot, first_page, num_pages))

    # -- collect ----------------------------------------------------------
    def collect(self, slot, first_page=0, num_pages=None):
        """Collect and clear (re-protect) the dirty pages of a slot or a range
        of it; returns their sorted gfns as uint64. ``last_collect_ns`` is the
        CLOCK_MONOTONIC time at which the log was sampled."""
        handle = self.handle
        slot = uint_arg(slot, "slot", 32)
        first_page = uint_arg(first_page, "first_page")
        if num_pages is None:  # to the slot's end as C sees it (no stale size)
            what = "collect(slot=%#x, first_page=%d)" % (slot, first_page)
            try:
                return self._collect_slots([slot], first_page, what)
            except KvmDirtyError as e:
                if e.errno != errno.EINVAL or not first_page:
                    raise
                npages = self._slot_info(slot, "collect").npages  # for the message
                if first_page <= npages:
                    raise
                raise ValueError("first_page %d is past the end of slot %#x (%d pages)"
                                 % (first_page, slot, npages)) from None
        num_pages = uint_arg(num_pages, "num_pages")
        end = first_page + num_pages
        # Size the output from a recent result: small collects stay cheap,
        # large ones grow (C resumes where the buffer filled).
        size = min(max(num_pages, 64), max(1024, 2 * self._collect_hint))
        buf = np.empty(size, dtype=np.uint64)
        ptr = u64_ptr(buf, True)
        n = 0
        res = ffi.new("struct kd_collect_result *")  # per call: threads may collect at once
        sampled = None
        start = first_page
        while True:
            rc = lib.kd_collect(handle, slot, start, end - start, ptr + n, size - n, res)
            if rc in (-errno.ENOENT, -errno.EINVAL) and sampled is not None:
                break  # the slot changed since the first call: see _collect_slots
            check(rc, "collect(slot=%#x, first_page=%d, num_pages=%d)",
                  (slot, first_page, num_pages))
            if sampled is None:
                sampled = res.sampled_ns
            n += res.count
            if res.resume_page >= end:
                break
            start = res.resume_page
            buf, ptr = _grown(buf, n)
            size = buf.size
        self.last_collect_ns = sampled
        self._collect_hint = n
        return buf[:n]

    def collect_slots(self, slots=None):
        """Collect and clear the dirty pages of several whole slots in one C
        call (kd_collect_slots): a guest-wide sync. ``slots`` defaults to
        every slot with dirty logging, in slot-list order. Returns one uint64
        array: each slot's sorted gfns after the previous slot's."""
        if slots is None:
            ids = [s.slot for s in self.slots() if s.flags & MEM_LOG_DIRTY_PAGES]
        else:
            ids = [uint_arg(s, "slot", 32) for s in slots]
        return self._collect_slots(ids, 0, "collect_slots(slots=%s)" % (ids,))

    def _collect_slots(self, ids, first_page, what):
        """kd_collect_slots of whole slots from ids[0]'s first_page, grown and
        resumed until done (C resumes where the buffer filled)."""
        handle = self.handle
        ids_c = ffi.new("uint32_t[]", ids or [0])
        size = max(1024, 2 * self._collect_hint)
        buf = np.empty(size, dtype=np.uint64)
        ptr = u64_ptr(buf, True)
        n = 0
        res = ffi.new("struct kd_collect_slots_result *")
        sampled = None
        index, page = 0, first_page
        while True:
            rc = lib.kd_collect_slots(handle, ids_c, len(ids), index, page, ptr + n, size - n,
                                      res)
            if rc in (-errno.ENOENT, -errno.EINVAL) and sampled is not None:
                # A resumed call found a slot deleted or re-created (smaller)
                # since the first one: the pages already taken are returned,
                # never dropped; the next collect reports the slot's state.
                break
            check(rc, what)
            if sampled is None:
                sampled = res.sampled_ns
            n += res.count
            if res.resume_index >= len(ids):
                break
            index, page = res.resume_index, res.resume_page
            buf, ptr = _grown(buf, n)
            size = buf.size
        self.last_collect_ns = sampled
        self._collect_hint = n
        return buf[:n]

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
        return "<VM backend=%s vcpus=%d%s>" % (self.backend, self.vcpus,
                                              " closed" if self.closed else "")
