"""The cost model: what the kernel (and the user side) would pay for the
events a backend counted, in nanoseconds per event.

One model serves everything: ``compare`` prices VM.stats with it, the
migration's virtual clock charges it (``migrate --cost-model``), and
``pykvmdirty calibrate`` measures its fields on this machine's /dev/kvm and
writes the same file format.

The defaults ship with the package in ``pykvmdirty/data/cost_model.json``: per
field its value, the event it prices and its source (a public document,
"measured by `pykvmdirty calibrate` on <machine>, <date>", or "assumed" with
the reason). A cost-model file is either that format or a plain JSON object
``{"field": ns}``; fields it does not name keep the defaults::

    model = CostModel.load("calibration.json")
    model.modelled_ns(vm.stats, backend="flat")
"""
import dataclasses
import json
import math
import numbers
import os
from typing import Dict, Mapping

from .bindings.constants import PAGE_SIZE
from .bindings.vm import WRITE_EVENTS

FORMAT = "pykvmdirty-cost-model"
VERSION = 1
MAX_FILE_BYTES = 1 << 20   # a cost-model file is read whole, at most this much
DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cost_model.json")
GIB_WORDS = (1 << 30) // PAGE_SIZE // 64  # 64-bit log words per GiB of slot
#: counters paid while the guest writes; the rest are paid by collection
#: the guest's side of dirty tracking: the events a write reports for itself
WRITE_SIDE = WRITE_EVENTS


def _read_default_file(path=DATA_FILE):
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ImportError("%s is not a version %d %s file" % (path, VERSION, FORMAT))
    return data["fields"]


_DEFAULTS = _read_default_file()
#: where each default comes from (field -> source text of the shipped data file)
DEFAULT_SOURCES: Dict[str, str] = {k: v["source"] for k, v in _DEFAULTS.items()}
#: what each field prices (field -> event)
EVENTS: Dict[str, str] = {k: v["event"] for k, v in _DEFAULTS.items()}


def _default(name):
    return dataclasses.field(default=float(_DEFAULTS[name]["value"]))


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Nanoseconds per counted event (see EVENTS); all fields are finite
    numbers >= 0. Defaults: the package's data/cost_model.json."""

    ioctl_ns: float = _default("ioctl_ns")
    word_ns: float = _default("word_ns")
    summary_word_ns: float = _default("summary_word_ns")
    bytemap_byte_ns: float = _default("bytemap_byte_ns")
    reprotect_ns: float = _default("reprotect_ns")
    tlb_flush_ns: float = _default("tlb_flush_ns")
    write_fault_ns: float = _default("write_fault_ns")
    pml_entry_ns: float = _default("pml_entry_ns")
    pml_flush_ns: float = _default("pml_flush_ns")
    ring_push_ns: float = _default("ring_push_ns")
    ring_full_exit_ns: float = _default("ring_full_exit_ns")
    ring_harvest_ns: float = _default("ring_harvest_ns")
    ring_reset_ns: float = _default("ring_reset_ns")
    protect_bump_ns: float = _default("protect_bump_ns")
    uffd_fault_ns: float = _default("uffd_fault_ns")
    uffd_reprotect_ns: float = _default("uffd_reprotect_ns")
    gfn_ns: float = _default("gfn_ns")
    page_ns: float = _default("page_ns")
    guest_write_ns: float = _default("guest_write_ns")
    setup_ns: float = _default("setup_ns")
    sync_ns: float = _default("sync_ns")
    downtime_overhead_ns: float = _default("downtime_overhead_ns")
    stopped_page_ns: float = _default("stopped_page_ns")
    fault_contention_ns: float = _default("fault_contention_ns")
    write_fault_again_ns: float = _default("write_fault_again_ns")

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
    def from_dict(cls, data, where="a cost model"):
        """Defaults overridden by `data`: {field: ns}, or the data-file format
        ({"format": ..., "fields": {field: {"value": ns, ...}}}); unknown
        fields raise ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError("%s must be a JSON object {field: ns}, got %s"
                             % (where, type(data).__name__))
        if "format" in data:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError("%s: format %r version %r, expected %r version %d"
                                 % (where, data.get("format"), data.get("version"),
                                    FORMAT, VERSION))
            fields = data.get("fields")
            if not isinstance(fields, Mapping):
                raise ValueError("%s: 'fields' must be an object" % where)
            values = {}
            for name, entry in fields.items():
                if not isinstance(entry, Mapping) or "value" not in entry:
                    raise ValueError("%s: field %s must be {\"value\": ns, \"source\": ...}, "
                                     "got %r" % (where, name, entry))
                values[name] = entry["value"]
            data = values
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError("%s: unknown cost model field(s) %s; known: %s"
                             % (where, ", ".join(unknown), ", ".join(cls.field_names())))
        return cls(**data)

    @classmethod
    def load(cls, path):
        """Read a cost-model file (either format, any subset of the fields)."""
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("cost model file %s is larger than the %d bytes a cost model "
                                 "may have" % (path, MAX_FILE_BYTES))
            data = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as e:
            raise ValueError("cost model file %s is not valid JSON: %s" % (path, e)) from None
        except OSError as e:
            raise ValueError("cannot read cost model file %s: %s"
                             % (path, e.strerror or e)) from None
        return cls.from_dict(data, "cost model file %s" % path)

    def to_file_dict(self, sources=None):
        """The data-file format: per field its value, event and source
        (``sources`` overrides DEFAULT_SOURCES for the fields it names; a
        value that differs from the default without a source says so)."""
        sources = dict(sources or {})
        default = CostModel()
        fields = {}
        for name in self.field_names():
            value = getattr(self, name)
            if name in sources:
                src = sources[name]
            elif value == getattr(default, name):
                src = DEFAULT_SOURCES[name]
            else:
                src = "set by the user (default %r: %s)" % (getattr(default, name),
                                                            DEFAULT_SOURCES[name])
            fields[name] = {"value": value, "event": EVENTS[name], "source": src}
        return {"format": FORMAT, "version": VERSION,
                "description": "Nanoseconds per counted event. Each field: value, what it "
                "prices, and where the value comes from.", "fields": fields}

    def save(self, path, sources=None):
        with open(path, "w") as f:
            json.dump(self.to_file_dict(sources), f, indent=1)
            f.write("\n")

    # -- pricing ------------------------------------------------------------
    def breakdown(self, stats, backend=None, include_user=False):
        """{counter: ns} for the counters this model prices.

        stats: a ``VM.stats`` dict (missing counters count as 0); include_user:
        also the user side of a collection (the migration loop's sync). backend:
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
            # what the user side pays besides: the byte map's walk, the emulator's
            # collect calls and the gfns they hand over
            out["bytemap_bytes_scanned"] = g("bytemap_bytes_scanned") * self.bytemap_byte_ns
            out["collect_calls"] = g("collect_calls") * self.ioctl_ns
            out["pages_collected"] = g("pages_collected") * self.gfn_ns
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
