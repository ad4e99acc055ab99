"""A cost model: what the kernel would pay for the events a backend counted.

The emulator counts events (``VM.stats``: write faults, pages re-protected,
TLB flushes, log words read, ring entries harvested and reset, ...). A
:class:`CostModel` prices each event in nanoseconds, so interfaces can be
compared on modelled kernel time as well as on measured user-side time.

Defaults come from the figures measured on this project's machine (see
/work/shared/FACTS.md, "Measured on this machine"); where nothing was
measured the comment says "assumed". A calibration file (JSON, one
``"field": ns`` per line, any subset of the fields) overrides them::

    model = CostModel.load("calibration.json")
    model.modelled_ns(vm.stats, backend="flat")
"""
import dataclasses
import json
import math
import numbers

GIB_WORDS = (1 << 30) // 4096 // 64  # 64-bit log words per GiB of slot: 4096
#: counters paid while the guest writes; the rest are paid by collection
WRITE_SIDE = ("write_faults", "pml_entries", "pml_flushes", "ring_pushes", "ring_full_exits")


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Nanoseconds per counted event. All fields are non-negative numbers."""

    # Real classic KVM_GET_DIRTY_LOG on this machine: 27 µs per GiB of slot
    # (FACTS.md: 512 GiB clean = 14.4 ms); a GiB of slot is 4096 log words.
    word_ns: float = 27000.0 / GIB_WORDS
    # Two-level summary words: read by the same kernel loop as leaf words;
    # assumed to cost the same as a leaf word (not measured separately).
    summary_word_ns: float = 27000.0 / GIB_WORDS
    # FACTS.md: "+0.15-0.23 µs per dirty page re-protected" (real GET, 512 GiB,
    # 1000 dirty); the midpoint.
    reprotect_ns: float = 190.0
    # Assumed: one remote TLB flush per GET/CLEAR that re-protected anything
    # (an IPI round trip on 2 vCPUs); not measured on this machine.
    tlb_flush_ns: float = 2000.0
    # FACTS.md: "re-dirty after collection ~6 µs/page" in a real guest here
    # (write fault on a re-protected page, exit and re-entry included).
    write_fault_ns: float = 6000.0
    # Assumed: a PML append is done by the CPU on the first write, ~free.
    pml_entry_ns: float = 10.0
    # Assumed: draining a full PML buffer is one VM exit, priced like the
    # measured fault round trip above.
    pml_flush_ns: float = 6000.0
    # Assumed: writing one ring entry inside the fault path (16-byte store).
    ring_push_ns: float = 20.0
    # Assumed: a KVM_EXIT_DIRTY_RING_FULL exit and re-entry, priced like the
    # measured fault round trip.
    ring_full_exit_ns: float = 6000.0
    # FACTS.md: real ring harvest 6-46 ns/entry here; near the geometric middle.
    ring_harvest_ns: float = 20.0
    # FACTS.md: real KVM_RESET_DIRTY_RINGS 56-169 ns/entry here; ~the middle.
    ring_reset_ns: float = 100.0
    # Assumed: an O(1) re-protection (generation bump) costs a TLB flush.
    protect_bump_ns: float = 2000.0
    # Assumed: one ioctl round trip (GET, CLEAR) from user space, ~1 µs.
    ioctl_ns: float = 1000.0
    # FACTS.md: userfaultfd WP_ASYNC first write 1.3 µs/page here (uffd backend
    # write faults are priced with this instead of write_fault_ns).
    uffd_fault_ns: float = 1300.0
    # FACTS.md: PAGEMAP_SCAN re-protect of 64 MiB (16384 pages) 45-300 µs
    # here: ~10 ns per page (uffd backend re-protection).
    uffd_reprotect_ns: float = 10.0
    # User side (only with include_user=True). FACTS.md: scanning the 128 MiB
    # byte map of a 512 GiB guest takes 9-15 ms here: ~0.09 ns per byte.
    bytemap_byte_ns: float = 12e6 / (128 << 20)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                    or not math.isfinite(v) or v < 0):
                raise ValueError("cost model field %s must be a finite number >= 0 ns, "
                                 "got %r" % (f.name, v))

    # -- (de)serialisation ------------------------------------------------
    @classmethod
    def field_names(cls):
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Defaults overridden by `data` ({field: ns}); unknown fields raise."""
        if not isinstance(data, dict):
            raise ValueError("a cost model must be a JSON object {field: ns}, got %s"
                             % type(data).__name__)
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError("unknown cost model field(s) %s; known: %s"
                             % (", ".join(unknown), ", ".join(cls.field_names())))
        return cls(**data)

    @classmethod
    def load(cls, path):
        """Read a calibration file (a JSON object, any subset of the fields)."""
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError("cost model file %s is not valid JSON: %s" % (path, e)) from None
        return cls.from_dict(data)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)
            f.write("\n")

    # -- pricing ------------------------------------------------------------
    def breakdown(self, stats, backend=None, include_user=False):
        """{counter: ns} for the counters this model prices.

        stats: a ``VM.stats`` dict (missing counters count as 0). backend:
        for "ring" and "uffd" the log words an emulated collect reads are a
        user-side staging bitmap, not a kernel GET, so they are not kernel
        time; for "uffd" faults and re-protection take the userfaultfd prices.
        """
        g = lambda name: stats.get(name, 0) or 0  # noqa: E731
        uffd = backend == "uffd"
        kernel_words = backend not in ("ring", "uffd")
        out = {
            "write_faults": g("write_faults") * (self.uffd_fault_ns if uffd
                                                 else self.write_fault_ns),
            "pml_entries": g("pml_entries") * self.pml_entry_ns,
            "pml_flushes": g("pml_flushes") * self.pml_flush_ns,
            "ring_pushes": g("ring_pushes") * self.ring_push_ns,
            "ring_full_exits": g("ring_full_exits") * self.ring_full_exit_ns,
            "pages_reprotected": g("pages_reprotected") * (self.uffd_reprotect_ns if uffd
                                                           else self.reprotect_ns),
            "protect_bumps": g("protect_bumps") * self.protect_bump_ns,
            "tlb_flushes": g("tlb_flushes") * self.tlb_flush_ns,
            "words_scanned": g("words_scanned") * self.word_ns if kernel_words else 0.0,
            "summary_words_scanned": g("summary_words_scanned") * self.summary_word_ns,
            "ring_harvested": g("ring_harvested") * self.ring_harvest_ns,
            "ring_reset": g("ring_reset") * self.ring_reset_ns,
            "ioctls": (g("get_calls") + g("clear_calls")) * self.ioctl_ns,
        }
        if include_user:
            out["bytemap_bytes_scanned"] = g("bytemap_bytes_scanned") * self.bytemap_byte_ns
        return out

    def modelled_ns(self, stats, backend=None, include_user=False):
        """Modelled kernel time (ns) of the events in `stats` (a VM.stats dict)."""
        return float(sum(self.breakdown(stats, backend, include_user).values()))

    def collect_side_ns(self, stats, backend=None, include_user=False):
        """The part of modelled_ns paid by collection (GET/CLEAR/collect,
        re-protection, flushes, ring harvest and reset), without the
        guest-side events (WRITE_SIDE: faults, PML, ring pushes and exits)."""
        b = self.breakdown(stats, backend, include_user)
        return float(sum(v for k, v in b.items() if k not in WRITE_SIDE))

    def kernel_get_ns(self, npages, dirty, nslots=1):
        """Modelled real classic KVM_GET_DIRTY_LOG of `nslots` slots covering
        `npages` pages with `dirty` pages set: the reference a kvm column
        falls back to where /dev/kvm is not usable."""
        words = -(-npages // 64) if nslots == 1 else npages / 64.0
        return float(words * self.word_ns + dirty * self.reprotect_ns
                     + (self.tlb_flush_ns if dirty else 0.0) + nslots * self.ioctl_ns)
