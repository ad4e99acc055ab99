"""A compare grid: guest sizes x dirty page counts x backends, one slot
layout; the slots of a guest, the dirty pages of a cell and the bitmap the
baselines scan."""
import dataclasses
import math

import numpy as np

from ...bindings.constants import (BACKENDS, CHUNK_PAGES, MAX_SLOT_PAGES, PAGE_SHIFT,
                                   RING_MAX_ENTRIES, RING_RESERVED_ENTRIES, USER_MEM_SLOTS)
from ...units import GiB

PAGES_PER_GIB = GiB >> PAGE_SHIFT
BASELINES = ("flatnonzero", "read")
ALL_BACKENDS = tuple(BACKENDS) + BASELINES  # every backend (BACKENDS) + the baselines
LAYOUTS = ("one", "many")
RING_ENTRIES = RING_MAX_ENTRIES  # KVM's maximum; vCPUs are added until the dirty pages fit
RING_RESERVED = RING_RESERVED_ENTRIES
MAX_SLOTS = USER_MEM_SLOTS
DEFAULT_SIZES = (1, 64, 512)
DEFAULT_DIRTY = (0, 1000, 100000)
DEFAULT_REPEATS = 5


def gib_to_pages(size_gib):
    """Pages of a guest of size_gib GiB; ValueError unless a positive whole
    number of 4 KiB pages."""
    if isinstance(size_gib, bool) or not isinstance(size_gib, (int, float)):
        raise ValueError("guest size must be a number of GiB, got %r" % (size_gib,))
    if not math.isfinite(size_gib) or size_gib <= 0:
        raise ValueError("guest size must be > 0 GiB, got %r" % (size_gib,))
    pages = size_gib * PAGES_PER_GIB
    if pages != int(pages):
        raise ValueError("guest size %r GiB is not a whole number of 4 KiB pages" % (size_gib,))
    return int(pages)


def slot_layout(npages, layout, slot_gib):
    """[(slot id, first page, npages)] for a guest of npages pages.

    Layout "one" is one slot where the kernel allows it; a larger guest is
    split into the fewest equal slots of at most MAX_SLOT_PAGES (2^31-1
    pages, KVM's cap), each a whole number of 2 MiB chunks: 24 TiB is four
    slots of 6 TiB. Layout "many" is slots of slot_gib GiB."""
    if layout not in LAYOUTS:
        raise ValueError("unknown layout %r; choose from %s" % (layout, ", ".join(LAYOUTS)))
    if layout == "one":
        if npages <= MAX_SLOT_PAGES:
            return [(0, 0, npages)]
        n = -(-npages // MAX_SLOT_PAGES) - 1
        per = MAX_SLOT_PAGES + 1
        while per > MAX_SLOT_PAGES:  # rounding up to a chunk may need one slot more
            n += 1
            per = -(-npages // n)
            per = -(-per // CHUNK_PAGES) * CHUNK_PAGES
        if n > MAX_SLOTS:
            raise ValueError("a guest of %d pages needs %d slots of at most %d pages, more "
                             "than KVM's %d slots" % (npages, n, MAX_SLOT_PAGES, MAX_SLOTS))
    else:
        per = gib_to_pages(slot_gib)
        if per > MAX_SLOT_PAGES:
            raise ValueError("slot size %r GiB exceeds KVM's %d pages per slot"
                             % (slot_gib, MAX_SLOT_PAGES))
        n = -(-npages // per)
        if n > MAX_SLOTS:
            raise ValueError("%d slots of %r GiB exceed KVM's %d slots; use larger --slot-gib"
                             % (n, slot_gib, MAX_SLOTS))
    return [(i, i * per, min(per, npages - i * per)) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A compare grid. Validated on creation (ValueError naming the bad value)."""

    sizes_gib: tuple = DEFAULT_SIZES
    dirty: tuple = DEFAULT_DIRTY
    backends: tuple = ALL_BACKENDS
    repeats: int = DEFAULT_REPEATS
    layout: str = "one"
    slot_gib: float = 1
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "sizes_gib", tuple(self.sizes_gib))
        object.__setattr__(self, "dirty", tuple(self.dirty))
        object.__setattr__(self, "backends", tuple(self.backends))
        if not self.sizes_gib:
            raise ValueError("at least one guest size is needed")
        if not self.dirty:
            raise ValueError("at least one dirty page count is needed")
        if not self.backends:
            raise ValueError("at least one backend is needed")
        for b in self.backends:
            if b not in ALL_BACKENDS:
                raise ValueError("unknown backend %r; choose from %s"
                                 % (b, ", ".join(ALL_BACKENDS)))
        if len(set(self.backends)) != len(self.backends):
            raise ValueError("backend listed twice in %s" % ",".join(self.backends))
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) \
                or self.repeats < 1:
            raise ValueError("repeats must be an integer >= 1, got %r" % (self.repeats,))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed must be an integer >= 0, got %r" % (self.seed,))
        pages = [gib_to_pages(s) for s in self.sizes_gib]
        for d in self.dirty:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
                raise ValueError("dirty page count must be an integer >= 0, got %r" % (d,))
            if d > min(pages):
                raise ValueError("%d dirty pages do not fit in a %r GiB guest (%d pages)"
                                 % (d, self.sizes_gib[pages.index(min(pages))], min(pages)))
        for p in pages:
            slot_layout(p, self.layout, self.slot_gib)

    def cells(self):
        """The grid as run_cell keyword dicts, in table order."""
        return [dict(size_gib=s, dirty=int(d), backend=b, layout=self.layout,
                     slot_gib=self.slot_gib, repeats=self.repeats, seed=self.seed,
                     deterministic=self.deterministic)
                for s in self.sizes_gib for d in self.dirty for b in self.backends]


def dirty_pages(npages, dirty, seed):
    """`dirty` distinct scattered pages of [0, npages), the same for every
    backend of a (size, dirty, seed) cell. Sorted uint64."""
    rng = np.random.default_rng([seed, npages, dirty])
    pages = rng.choice(npages, size=dirty, replace=False) if dirty else np.empty(0, np.int64)
    return np.sort(pages).astype(np.uint64)


def pages_to_bitmap(pages, npages):
    """KVM-layout bitmap (uint64 words) with the bits of `pages` set. Every
    page of it is written (populated), like a kernel log: np.zeros would map
    untouched pages to the shared zero page and flatter every scan."""
    bm = np.empty(-(-npages // 64), dtype=np.uint64)
    bm.fill(0)
    np.bitwise_or.at(bm, (pages >> np.uint64(6)).astype(np.intp),
                     np.left_shift(np.uint64(1), pages & np.uint64(63)))
    return bm


def ring_vcpus(dirty):
    """vCPUs needed so `dirty` pages fit under each ring's soft limit."""
    return max(1, -(-dirty // (RING_ENTRIES - RING_RESERVED)))


def scenario_dict(s):
    d = dataclasses.asdict(s)
    for k in ("sizes_gib", "dirty", "backends"):
        d[k] = list(d[k])
    return d
