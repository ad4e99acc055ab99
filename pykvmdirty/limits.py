"""Memory a run will commit, estimated before it starts, and the limit it must fit.

Every entry point that can be asked for more memory than the machine holds —
``migrate`` (guest, destination, logs), ``compare``/``sweep`` cells (logs of
huge guests), the TCP receiver (whatever a stream's MEM_SIZE record claims) —
estimates what the run will really commit and refuses before allocating
anything when that exceeds the limit.

The limit defaults to ``DEFAULT_FRACTION`` of the memory available when the
check runs (``MemAvailable`` from /proc/meminfo, lowered to what the cgroup
still allows): the rest is left to the page cache and the other processes.
Callers may pass their own (``--max-memory``).

What the estimates count (bytes; the C core's allocations are in
csrc/vm/memslot.c, csrc/core/bitmap.c, csrc/migrate/wire_dest.c):

- logs (slot_log, the one model of them, checked against kd_log_memory by
  tests/test_log_memory.py): populated at slot creation
  (kd_pages_alloc(..., populate=true)): one bit per page for the dirty
  bitmap, plus per backend the write-protection bitmap (PML tracking), the
  two-level summary, the byte map (a byte per page) and its scratch bitmap,
  the pending maps and scan targets, hier's lazily backed arrays, KVM's own
  two bitmaps, and the vCPUs' rings (16 bytes an entry);
- a migration's written pages (written_classes): per range — the hot set of
  each vCPU, the cold rest, the populated pages — the fraction written by
  the end of the run; every lazily backed array commits, for those pages,
  its own unit (committed_bytes): the guest's 4 KiB pages (contents) or
  4 KiB blocks of 512 versions (the content-free model), the sender's
  last-sent versions (8 bytes per page, stored only where they change), the
  destination's pages (2 MiB where transparent huge pages allow) or
  versions; hier's pool, a block per 4096-page group written
  (hier_written);
- what the loop writes whole: the sent map and the migration bitmap (a bit
  per page each), the largest sync's dirty-page list, the batch arrays;
- verification with contents: page hashes (8 bytes per page, three arrays
  while joined); versions are compared in place;
- this process as it stands (process_resident), so that the total is the
  run's peak RSS; page tables and KVM's slot metadata are counted apart
  (Estimate.resident leaves them out: they are not the process's pages).
"""
import math
import os
from typing import NamedTuple

from .bindings.constants import CHUNK_PAGES, DIRTY_GFN_SIZE, PAGE_SIZE
from .units import GiB, KiB, MiB, TiB, format_bytes, parse_size  # noqa: F401  (format_bytes: limits.format_bytes)

PTE_BYTES = 8                 # one page-table entry per 4 KiB page read or written
# The kernel's per-memslot metadata, vmalloc'd and zeroed when the slot is
# created, dirty logging or not: the shadow MMU's reverse map (8 bytes per
# 4 KiB page; this machine's KVM runs on PVM, shadow paging) plus the large-
# page info. Measured here: VmallocUsed +161 MiB for a 64 GiB slot, i.e.
# ~20 GiB for an 8 TiB slot; this, not the dirty bitmaps, bounds the real
# kvm backend's slot sizes.
KVM_SLOT_METADATA_PER_PAGE = 10
HIER_INDEX_PER_GROUP = 4      # hier: a 4-byte block index per 4096-page group
HIER_GROUP_PAGES = 4096
HIER_BLOCK_BYTES = 512
HIER_RETIRE_SLACK = 1024      # clean blocks kept beyond 2x the working set (hier_log.h)
HIER_RETIRE_BATCH = 256       # blocks unlinked per writer sync: pool room beyond a block per group
HIER_SCRATCH_WORDS = 64 + 64 * 64 + 128   # a collect's scratch (hier_log.h)
HUGE_BYTES = 2 * 1024 * 1024
DEFAULT_FRACTION = 0.8        # of the available memory, when no limit is given


class MemoryLimitError(ValueError):
    """A run would need more memory than its limit; raised before it starts."""

    def __init__(self, message, estimate=None, limit=None):
        super().__init__(message)
        self.estimate = estimate
        self.limit = limit


def _cgroup_room():
    """Bytes the current cgroup (v2) still allows, or None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.split(":", 2)[2].strip() for line in f
                         if line.startswith("0::")), None)
        if path is None:
            return None
        base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            top = f.read().strip()
        if top == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            used = int(f.read())
        return max(0, int(top) - used)
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def available_memory():
    """Bytes this process could still commit: MemAvailable, or the cgroup's
    remaining room where that is smaller."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * KiB
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room()
    return avail if room is None else min(avail, room)


def default_limit():
    """(limit in bytes, how it was chosen) for runs not given a limit."""
    avail = available_memory()
    return (int(avail * DEFAULT_FRACTION),
            "%d%% of the %s available" % (DEFAULT_FRACTION * 100, format_bytes(avail)))


def resolve_limit(max_memory, name="max_memory"):
    """max_memory (None: the default, bytes, or a size string) -> (bytes, how)."""
    if max_memory is None:
        return default_limit()
    if isinstance(max_memory, str):
        value = parse_size(max_memory, name)
    elif isinstance(max_memory, bool) or not isinstance(max_memory, int):
        raise TypeError("%s must be a size in bytes or like '8GiB', got %r"
                        % (name, max_memory))
    else:
        value = max_memory
    if value <= 0:
        raise ValueError("%s must be positive, got %r" % (name, max_memory))
    return value, "%s %s" % (name, format_bytes(value))


class Estimate:
    """Named parts (bytes) of what a run commits; ``total`` is their sum,
    ``resident`` the sum of the parts the process itself holds resident
    (what its peak RSS measures: page tables and the kernel's own memory
    are commitments, not resident pages of the process)."""

    def __init__(self):
        self.parts = []
        self.kernel = set()

    def add(self, name, nbytes, resident=True):
        nbytes = int(nbytes)
        if nbytes > 0:
            self.parts.append((name, nbytes))
            if not resident:
                self.kernel.add(name)
        return self

    @property
    def total(self):
        return sum(b for _, b in self.parts)

    @property
    def resident(self):
        return sum(b for name, b in self.parts if name not in self.kernel)

    def describe(self, top=4):
        big = sorted(self.parts, key=lambda p: -p[1])[:top]
        return ", ".join("%s %s" % (name, format_bytes(b)) for name, b in big)


def check(estimate, limit, subject, override="max_memory"):
    """Raise MemoryLimitError if estimate exceeds limit=(bytes, how).

    subject names what asked for it (e.g. "guest_size 64GiB"), override the
    option that raises the limit."""
    lim, how = limit
    if estimate.total > lim:
        raise MemoryLimitError(
            "%s needs an estimated %s of memory (%s), more than the limit of %s (%s); "
            "ask for less, or raise %s if the machine really holds it"
            % (subject, format_bytes(estimate.total), estimate.describe(),
               format_bytes(lim), how, override), estimate.total, lim)


# ---------------------------------------------------------------------------
# what each kind of run commits

def _bitmap(npages):
    """A populated bitmap of npages bits (64-bit words, whole 4 KiB pages)."""
    words = -(-npages // 64)
    return -(-words * 8 // PAGE_SIZE) * PAGE_SIZE


def _pages(nbytes):
    return -(-nbytes // PAGE_SIZE) * PAGE_SIZE


class SlotLog(NamedTuple):
    """A slot's dirty log, bytes: ``reserved`` and ``resident`` are what
    kd_log_memory (VM.log_memory) reports for it right after its log is
    enabled (the process's arrays: address space, and the pages populated
    then); ``kernel`` is what the kernel holds besides (KVM's bitmaps), which
    kd_log_memory cannot see."""
    reserved: int
    resident: int
    kernel: int = 0


def _lazy(nbytes):
    """(reserved, resident) of an array reserved MAP_NORESERVE, committed
    where written (kd_pages_alloc(..., populate=false), hier's lazy_map)."""
    return _pages(nbytes), 0


def slot_log(backend, npages, tracking="write_protect", initially_set=False):
    """SlotLog of one slot of npages pages: the arrays the backend's
    log_alloc makes (csrc/emu/*.c, csrc/real/*/*_ops.c, csrc/core/pending.c),
    each a whole number of pages; populated ones (kd_bitmap_alloc,
    kd_pages_alloc(..., true)) are resident from the start. The one model of
    log memory: tests/test_log_memory.py checks it against kd_log_memory."""
    words = -(-npages // 64)
    bm = _pages(words * 8)
    arrays = []  # (reserved, resident)
    if backend in ("kvm", "uffd", "ring"):
        # pending map + its summary (a bit per 64 words, csrc/core/pending.c)
        arrays += [(bm, bm), (_pages(-(-words // 4096) * 8),) * 2]
        # kvm, uffd: the GET / scan target; ring: the protection state
        arrays.append((bm, bm))
    elif backend == "hier":
        chunks = -(-npages // CHUNK_PAGES)
        groups = -(-npages // HIER_GROUP_PAGES)
        # every array lazily backed; INITIALLY_SET writes the summary
        # levels, the block index and a block per group at once (in 4 KiB
        # pages: a pool of 2 MiB and more may take huge pages where THP allow)
        full = _pages if initially_set else (lambda nbytes: 0)
        n = chunks
        while True:  # the summary levels: a bit per node of the level below
            n = -(-n // 64)
            arrays.append((_pages(n * 8), full(n * 8)))
            if n <= 1:
                break
        arrays += [(_pages(groups * HIER_INDEX_PER_GROUP),                     # block index
                    full(groups * HIER_INDEX_PER_GROUP)),
                   (_pages((groups + HIER_RETIRE_BATCH) * HIER_BLOCK_BYTES),   # leaf pool
                    full(groups * HIER_BLOCK_BYTES)),
                   _lazy(groups * HIER_INDEX_PER_GROUP),                       # clean list
                   _lazy(HIER_SCRATCH_WORDS * 8)]                              # collect scratch
        if tracking != "write_protect":  # D bits: a full bitmap only when all set
            arrays.append((bm, bm) if initially_set else _lazy(words * 8))
    else:  # flat, twolevel, bytemap: the kernel's bitmap, the D bits apart from it
        arrays.append((bm, bm))
        if tracking != "write_protect":
            arrays.append((bm, bm))
        if backend == "twolevel":
            chunks = -(-npages // CHUNK_PAGES)
            summary = _pages(-(-chunks // 64) * 8)   # a bit per chunk
            arrays.append((summary, summary))
        elif backend == "bytemap":
            arrays += [(_pages(npages),) * 2, (bm, bm)]   # byte map + GET scratch
    # KVM's own: the live bitmap and the GET buffer (kvm_alloc_dirty_bitmap)
    kernel = 2 * bm if backend == "kvm" else 0
    return SlotLog(sum(r for r, _ in arrays), sum(c for _, c in arrays), kernel)


def ring_memory(backend, vcpus=1, ring_entries=4096):
    """Bytes of the per-vCPU dirty rings (16-byte entries, whole pages): the
    ring backend's (populated at VM creation) or KVM's (mapped from the kernel)."""
    if backend not in ("ring", "kvm") or not ring_entries:
        return 0
    return vcpus * _pages(ring_entries * DIRTY_GFN_SIZE)


def log_memory(backend, slot_pages, vcpus=1, ring_entries=4096, tracking="write_protect"):
    """Bytes of log memory the C core (and, for kvm, the kernel) allocates
    for slots of slot_pages pages each, at full population: every array's
    reserved size (a lazily backed log, hier, commits it only where pages
    get dirty), the kernel's bitmaps and the vCPUs' rings (slot_log,
    ring_memory)."""
    total = 0
    for n in slot_pages:
        log = slot_log(backend, n, tracking)
        total += log.reserved + log.kernel
    return total + ring_memory(backend, vcpus, ring_entries)


def kvm_slot_metadata(slot_pages):
    """Bytes the kernel vmallocs per memslot beyond the dirty bitmaps (the
    shadow MMU's rmap and large-page info), dirty logging or not."""
    return sum(n * KVM_SLOT_METADATA_PER_PAGE for n in slot_pages)


def thp_mode():
    """Transparent huge pages: 'always', 'madvise' or 'never'."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
        return text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return "never"


def process_resident():
    """Bytes this process has resident now (the interpreter, numpy, the C
    library, what the caller already holds): /proc/self/statm."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def committed_bytes(classes, unit, per_commit):
    """Bytes committed in an array of `unit` bytes per guest page, whose
    memory the kernel commits `per_commit` pages' worth at a time (a 4 KiB
    page of entries, or a 2 MiB huge page) the first time one is written.

    classes: [(pages, fraction written)] of ranges the writes fall on at
    random (a fraction 1: a range written whole)."""
    total = 0.0
    for pages, fraction in classes:
        if pages <= 0 or fraction <= 0:
            continue
        units = -(-int(pages) // per_commit)
        touched = 1.0 if fraction >= 1 else -math.expm1(per_commit * math.log1p(-fraction))
        total += units * touched * per_commit * unit
    return int(total)


def _per_commit(unit, huge):
    """Pages per commit of an array of `unit` bytes per page: a 4 KiB page
    of it, or a 2 MiB one where huge pages back it."""
    return (HUGE_BYTES if huge else PAGE_SIZE) // unit


#: pages the migration loop hands out per batch (migration/pending.py BATCH);
#: per batch it holds a few arrays of that many 8-byte entries (gfns, values,
#: the scan's output)
BATCH_PAGES = 1 << 16
BATCH_ARRAYS = 4


def bulk_seconds(npages, populated, bandwidth=0, link_bandwidth=0, page_ns=None):
    """The bulk pass's duration (seconds): every page read and
    priced page_ns (the cost model's per-page send cost; default: the
    package's measured default), the populated pages' bytes and the zero
    pages' records at the slower of the rate limit and the link."""
    from .bindings.constants import WIRE_PAGE_RECORD, WIRE_ZERO_RECORD
    if page_ns is None:
        from .costmodel import CostModel
        page_ns = CostModel().page_ns
    speed = min([b for b in (bandwidth, link_bandwidth) if b] or [1250 * 1000 * 1000])
    nbytes = populated * WIRE_PAGE_RECORD + (npages - populated) * WIRE_ZERO_RECORD
    return npages * page_ns / 1e9 + nbytes / speed


def migration_seconds(npages, populated, rate, distinct, bandwidth=0, link_bandwidth=0,
                      page_ns=None, downtime_limit=0.3, max_passes=30):
    """How long the guest writes during a migration (seconds): the bulk pass,
    then passes that each send what the one before left dirty (distinct(w):
    the pages w writes dirty), until a pass fits the downtime limit or
    max_passes; times 1.25 (the loop's syncs and partial passes)."""
    from .bindings.constants import WIRE_PAGE_RECORD
    if page_ns is None:
        from .costmodel import CostModel
        page_ns = CostModel().page_ns
    speed = min([b for b in (bandwidth, link_bandwidth) if b] or [1250 * 1000 * 1000])
    per_page = WIRE_PAGE_RECORD / speed + page_ns / 1e9   # a record holds its page
    t = bulk_seconds(npages, populated, bandwidth, link_bandwidth, page_ns)
    last = t
    for _ in range(max(0, int(max_passes) - 1)):
        last = distinct(rate * last) * per_page
        t += last
        if last <= downtime_limit:
            break
    return 1.25 * t


def _distinct(writes, pages):
    """Expected distinct pages hit by `writes` uniform draws over `pages`."""
    if pages <= 0 or writes <= 0:
        return 0.0
    return pages * -math.expm1(-writes / pages)


def written_classes(npages, nslots, vcpus=2, populate=0.25, rate=0, workload="hotspot",
                    bandwidth=0, link_bandwidth=0, trace_pages=None, hot=None,
                    fill="version", page_ns=None, downtime_limit=0.3, max_passes=30,
                    warmup=0):
    """The guest's written pages by the end of a migration, as
    [(pages in a range, fraction of them written)]: the ranges the writes
    fall on at random. Populated pages: the first ones of each slot (fill
    "random") or scattered (fill "version"). The workload's: the distinct
    pages it writes while the migration runs (migration_seconds) plus its
    warm-up; a hotspot has a contiguous hot set per vCPU (each vCPU's
    generator draws its own, csrc/migrate/workload.c), filled as uniform
    draws fill it, and spreads the cold share of its writes over the rest; a
    uniform workload spreads them over the guest; a trace writes at most
    its own pages."""
    populated = int(round(npages * populate))
    if trace_pages is not None:
        def distinct(w):
            return min(w, trace_pages)
        classes = [[npages, 0.0]]
        hot_pages, split = 0, None
    elif workload in ("uniform", "hotspot") and rate:
        hot_pages = 0
        if workload == "hotspot" and hot is not None:
            fraction, share = hot
            hot_pages = min(npages, vcpus * max(1, fraction * npages))

            def distinct(w):
                return _distinct(w * share, hot_pages) + _distinct(w * (1 - share),
                                                                   npages - hot_pages)

            def split(w):
                return _distinct(w * share, hot_pages), _distinct(w * (1 - share),
                                                                  npages - hot_pages)
        else:
            def distinct(w):
                return _distinct(w, npages)
            split = None
        classes = [[hot_pages, 0.0], [npages - hot_pages, 0.0]] if hot_pages else \
            [[npages, 0.0]]
    elif workload == "idle" or not rate:
        if fill == "random":
            return [(npages - populated, 0.0), (populated, 1.0)]
        return [(npages, populated / npages)]
    else:  # zipf, sequential, migration-test: a bound, the writes' own count
        def distinct(w):
            return min(w, npages)
        classes = [[npages, 0.0]]
        hot_pages, split = 0, None
    seconds = migration_seconds(npages, populated, rate, distinct, bandwidth, link_bandwidth,
                                page_ns, downtime_limit, max_passes) + warmup
    writes = (rate or 0) * seconds
    if trace_pages is not None:
        classes[0][1] = min(1.0, trace_pages / npages)
    elif hot_pages and split is not None:
        h, c = split(writes)
        classes[0][1] = h / hot_pages
        classes[1][1] = c / max(1, npages - hot_pages)
    else:
        classes[0][1] = min(1.0, distinct(writes) / npages)
    if fill == "random":  # whole first pages of each slot, apart from the writes' ranges
        return [(p, f) for p, f in classes] + [(populated, 1.0)]
    p = populated / npages
    return [(pages, 1 - (1 - f) * (1 - p)) for pages, f in classes]


#: bytes per page of a sync's dirty list while the loop holds it (the gfns
#: and one temporary of the same size; fitted on migrate runs, see above)
SYNC_LIST_BYTES = 16


def largest_sync(npages, populate, rate, classes, bandwidth=0, link_bandwidth=0,
                 page_ns=None):
    """Pages of the largest sync: what the workload dirties during the bulk
    pass, bounded by the pages its ranges can hold."""
    if not rate:
        return 0
    bulk = bulk_seconds(npages, int(round(npages * populate)), bandwidth, link_bandwidth,
                        page_ns)
    cap = sum(p * min(1.0, f) for p, f in classes)
    return int(min(rate * bulk, cap))


def migration_estimate(npages, nslots, backend, vcpus=2, populate=0.25, rate=0,
                       workload="hotspot", bandwidth=0, link_bandwidth=0, sink="local",
                       verify=True, ring_entries=4096, tracking="write_protect",
                       batch_bytes=MiB, trace_pages=None, hot=None, fill="version",
                       page_ns=None, downtime_limit=0.3, max_passes=30,
                       page_model="contents", warmup=0, process=True):
    """What ``migrate()`` will hold resident at its peak for a guest of npages
    pages, part by part, plus the kernel memory it makes the machine commit
    (page tables, KVM's slot metadata: not resident in this process, but
    memory all the same).

    The written pages (written_classes) decide what the lazily backed arrays
    commit: the guest (4 KiB per page, or with page_model "versions" 8 bytes
    per page, in 4 KiB blocks of 512 entries), the sender's last-sent
    versions (8 bytes per page, written only where a nonzero page was sent),
    the destination's copy (contents in 2 MiB pages where transparent huge
    pages allow, or versions). The bitmaps the loop writes whole (sent,
    migration bitmap) and the dirty logs (populated when a slot is made)
    count in full. With contents the verification hashes every page on both
    sides; versions are compared in place.

    process: count what this process already holds (process_resident()), so
    that the total is the run's peak resident set."""
    per = -(-npages // nslots)
    slot_pages = [min(per, npages - i * per) for i in range(nslots) if npages - i * per > 0]
    classes = written_classes(npages, nslots, vcpus, populate, rate, workload, bandwidth,
                              link_bandwidth, trace_pages, hot, fill, page_ns,
                              downtime_limit, max_passes, warmup)
    thp = thp_mode()
    versions = page_model == "versions"
    entry = _per_commit(8, thp == "always")
    est = Estimate()
    if process:
        est.add("this process", process_resident())
    if versions:
        est.add("source page versions", committed_bytes(classes, 8, entry))
        est.add("page tables", -(-npages * 8 // PAGE_SIZE) * PTE_BYTES * 2, resident=False)
    else:
        est.add("source guest memory",
                committed_bytes(classes, PAGE_SIZE, _per_commit(PAGE_SIZE, thp == "always")))
        # every page the sender or a hash reads maps a page-table entry
        est.add("page tables", npages * PTE_BYTES * (2 if sink == "local" else 1),
                resident=False)
    if backend == "hier":   # lazily backed: what the written pages make it commit
        est.add("dirty logs", hier_written(slot_pages, classes))
    else:
        est.add("dirty logs", log_memory(backend, slot_pages, vcpus, ring_entries, tracking))
    if backend == "kvm":
        est.add("kernel slot metadata (rmap)", kvm_slot_metadata(slot_pages), resident=False)
    est.add("sender's last-sent versions", committed_bytes(classes, 8, entry))
    est.add("sent and migration bitmaps", 2 * sum(_bitmap(n) for n in slot_pages))
    # a sync's dirty-page list and the arrays that set it in the migration
    # bitmap: the largest is the first sync's, what the bulk pass left dirty
    # (fitted: two 8-byte arrays per page, measured at 64 and 512 GiB)
    est.add("dirty-page lists of a sync", SYNC_LIST_BYTES * largest_sync(
        npages, populate, rate, classes, bandwidth, link_bandwidth, page_ns))
    est.add("batch buffer and per-batch arrays", (batch_bytes if sink != "null" else 0)
            + BATCH_ARRAYS * BATCH_PAGES * 8)
    if sink == "local":
        if versions:
            est.add("destination page versions", committed_bytes(classes, 8, entry))
        else:  # destination memory asks for huge pages (csrc/migrate/wire_dest.c)
            est.add("destination", committed_bytes(classes, PAGE_SIZE,
                                                    _per_commit(PAGE_SIZE, thp != "never"))
                    + _bitmap(npages))
    if verify and sink != "null" and not versions:
        # the destination's hashes, and the source's per slot then joined
        est.add("verification hashes", 3 * npages * 8)
    return est


def compare_cell_estimate(npages, slot_pages, backend, dirty, vcpus=1, ring_entries=65536):
    """What one compare cell commits: the backend's logs (a VM without guest
    memory), or the baselines' bitmap, plus the dirty pages found."""
    est = Estimate()
    if backend in ("flatnonzero", "read"):
        est.add("bitmap", _bitmap(npages))
    elif backend == "hier":
        est.add("dirty logs", hier_committed(slot_pages, dirty))
    else:
        est.add("dirty logs", log_memory(backend, slot_pages, vcpus, ring_entries))
        if backend == "kvm":
            est.add("kernel slot metadata (rmap)", kvm_slot_metadata(slot_pages))
            est.add("guest pages written", dirty * (PAGE_SIZE + PTE_BYTES))
        if backend == "uffd":
            # UFFD_FEATURE_WP_UNPOPULATED write-protects never-touched memory
            # with a pte marker per page: the page tables of the whole guest
            # (measured here: +32 MiB of PageTables for a 16 GiB slot)
            est.add("page tables of the write-protected guest", npages * PTE_BYTES)
            est.add("guest pages written", dirty * PAGE_SIZE)
    est.add("dirty page lists", dirty * 8 * 4)
    return est


def hier_committed(slot_pages, dirty):
    """Bytes the hier log commits for `dirty` scattered pages (csrc/emu/
    hier_log.c: every array reserved MAP_NORESERVE, committed where
    written): at most the whole block index and summary levels of every slot
    (about 1/500 of a flat bitmap), plus the pool blocks: one per dirty page,
    and as many clean ones as the log keeps linked before it gives them back
    (2x the working set + HIER_RETIRE_SLACK), in 2 MiB pages (the arrays ask
    for transparent huge pages)."""
    total = 0
    for n in slot_pages:
        groups = -(-n // HIER_GROUP_PAGES)
        total += _hier_index(n)
        pool = min(groups, 3 * dirty + HIER_RETIRE_SLACK) * HIER_BLOCK_BYTES
        total += -(-pool // HUGE_BYTES) * HUGE_BYTES
    return total


def _hier_index(npages):
    """A slot's hier block index (4 bytes per 4096-page group) and its two
    summary levels over the 2 MiB chunks: what every slot commits at most."""
    groups = -(-npages // HIER_GROUP_PAGES)
    return _pages(groups * HIER_INDEX_PER_GROUP) + 2 * _bitmap(-(-npages // CHUNK_PAGES))


def hier_written(slot_pages, classes):
    """Bytes the hier log commits over a migration whose written pages are
    `classes` (written_classes): every slot's block index and summary
    levels (hier_committed's), plus a pool block for each 4096-page group a
    write ever touched, in 2 MiB pages (a slot's pool may start a page of its
    own)."""
    total = sum(_hier_index(n) for n in slot_pages)
    touched = committed_bytes(classes, 1, HIER_GROUP_PAGES) // HIER_GROUP_PAGES
    pool = touched * HIER_BLOCK_BYTES
    return total + -(-pool // HUGE_BYTES) * HUGE_BYTES + len(slot_pages) * HUGE_BYTES


def receiver_claim_estimate(guest_bytes):
    """What a receiver commits for a stream announcing guest_bytes: every page
    written (at most), a bit per page, and 8 bytes of hash per page (whose
    computation reads every page: one page-table entry each)."""
    npages = -(-guest_bytes // PAGE_SIZE)
    est = Estimate()
    est.add("destination memory", guest_bytes)
    est.add("page hashes", npages * (8 + PTE_BYTES) + _bitmap(npages))
    return est


def parallel(estimate, copies, what):
    """The same estimate for `copies` runs at once (e.g. sweep workers)."""
    out = Estimate()
    for name, b in estimate.parts:
        out.add("%s x%d %s" % (name, copies, what) if copies > 1 else name, b * copies,
                resident=name not in estimate.kernel)
    return out

