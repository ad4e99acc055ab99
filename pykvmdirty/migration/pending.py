"""The migration bitmap: which pages are still to send, and where the scan is.

QEMU keeps one such bitmap per RAMBlock (``RAMBlock::bmap``, migration/ram.c):
all ones at setup, a sync ORs the dirty log into it, sending a page clears its
bit, and the send loop walks it in address order from where it stopped last,
wrapping at the end of guest memory (``find_next_bit`` from
``last_seen_block`` / ``last_page``). Every policy of the loop sends through
this one structure; a pass-based policy just empties it between syncs.

Invariants:
- ``count`` is the number of set bits over all slots; bits past a slot's
  last page are never set;
- the cursor is (slot index, page offset in that slot); the pages handed out
  by ``next_batch`` are the set bits from the cursor on, in address order, and
  ``consume`` clears exactly the first ``k`` of them and moves the cursor past
  the last one, so a page set again by a sync while it waits behind the cursor
  is sent on the next round, never lost;
- a slot marked ``stale`` (per-slot polling) is collected by the loop when the
  cursor enters it, before any of its pages is handed out;
- a run of at least BATCH pending pages starting on a word boundary (the bulk
  pass: the bitmap is all ones) is handed out as a PageRun, a range the sender
  walks without a gfn list; it obeys the same rules.
"""
import numpy as np

from ..bindings.scan import bitmap_to_gfns

#: pages handed out per batch at most (the sender stops earlier at a rate
#: limit or the time cap; the rest stays set)
BATCH = 1 << 16
#: pages handed out as one PageRun at most
RUN_PAGES = 1 << 22
_WINDOW_WORDS = 1 << 12   # bitmap words looked at per step of a batch search


class PageRun:
    """Slot-relative pages [first, stop) of one slot, every one pending."""
    __slots__ = ("first", "stop")

    def __init__(self, first, stop):
        self.first = first
        self.stop = stop

    @property
    def size(self):
        return self.stop - self.first

    def __repr__(self):
        return "PageRun(%d, %d)" % (self.first, self.stop)


_ONES = 0xFFFFFFFFFFFFFFFF


def _masks(lo, hi):
    """(first word, last word, mask of bits [lo, ..) in the first, mask of
    bits [.., hi) in the last) for bits [lo, hi), lo < hi."""
    w0, w1 = lo >> 6, (hi - 1) >> 6
    first = np.uint64((_ONES << (lo & 63)) & _ONES)
    last = np.uint64(_ONES >> (63 - ((hi - 1) & 63)))
    return w0, w1, first, last


def _set_range(words, lo, hi):
    """Set bits [lo, hi) of a uint64 word array."""
    if lo >= hi:
        return
    w0, w1, first, last = _masks(lo, hi)
    if w0 == w1:
        words[w0] |= first & last
        return
    words[w0] |= first
    words[w0 + 1:w1] = np.uint64(_ONES)
    words[w1] |= last


def _clear_range(words, lo, hi):
    """Clear bits [lo, hi) of a uint64 word array."""
    if lo >= hi:
        return
    w0, w1, first, last = _masks(lo, hi)
    if w0 == w1:
        words[w0] &= ~(first & last)
        return
    words[w0] &= ~first
    words[w0 + 1:w1] = 0
    words[w1] &= ~last


class Pending:
    """Per slot a bitmap of the pages still to send, a running count and the
    sample time (sender clock) of the sync that last set bits in it."""

    def __init__(self, slots):
        self.slots = slots
        self.words = [np.zeros((sl.npages + 63) // 64, dtype=np.uint64) for sl in slots]
        self.count = 0
        self.sample_ns = [0] * len(slots)
        self.stale = [False] * len(slots)
        self.slot_i = 0         # cursor: slot index
        self.page = 0           # cursor: page offset inside that slot
        self.rounds = 0         # times the cursor wrapped from the last slot to the first

    def fill(self, sample_ns):
        """Every page of every slot is to send (QEMU's bmap at setup)."""
        for i, sl in enumerate(self.slots):
            self.words[i][:] = 0
            _set_range(self.words[i], 0, sl.npages)
            self.sample_ns[i] = sample_ns
        self.count = sum(sl.npages for sl in self.slots)

    def add(self, i, gfns, sample_ns):
        """Set the bits of slot i's gfns (any order, repeats allowed; a
        collection's sorted, unique gfns are taken as they are, without a
        sort); returns how many were newly set (QEMU's num_dirty_pages_period
        counts these)."""
        self.sample_ns[i] = sample_ns
        if gfns is None or gfns.size == 0:
            return 0
        rel = np.asarray(gfns, dtype=np.uint64) - np.uint64(self.slots[i].base_gfn)
        if rel.size > 1 and not bool(np.all(rel[1:] > rel[:-1])):
            rel = np.unique(rel)
        w = self.words[i]
        idx = (rel >> np.uint64(6)).astype(np.intp)
        bit = np.left_shift(np.uint64(1), rel & np.uint64(63))
        new = (w[idx] & bit) == 0
        nnew = int(new.sum())
        if nnew:
            np.bitwise_or.at(w, idx[new], bit[new])
            self.count += nnew
        return nnew

    def or_bitmap(self, i, bitmap, sample_ns):
        """OR a dirty bitmap of slot i (KVM layout, the slot's words) into
        its bits, as QEMU's sync ORs the dirty log into ``bmap`` word by word:
        no gfn list is made. Returns (bits newly set, bits set in bitmap)."""
        self.sample_ns[i] = sample_ns
        w = self.words[i]
        b = np.asarray(bitmap, dtype=np.uint64)[:w.size]
        new = b & ~w
        nnew = int(np.bitwise_count(new).sum())
        np.bitwise_or(w, b, out=w)
        self.count += nnew
        return nnew, int(np.bitwise_count(b).sum())

    def slot_count(self, i):
        return int(np.unpackbits(self.words[i].view(np.uint8)).sum())

    def next_batch(self, collect_stale):
        """(slot index, gfns) of up to BATCH pages to send from the cursor on,
        moving the cursor over empty slots (and wrapping once); None if no page
        is pending. collect_stale(i) is called for a stale slot the cursor
        enters, before its bits are read."""
        for _ in range(2 * len(self.slots) + 1):
            i = self.slot_i
            sl = self.slots[i]
            if self.stale[i]:
                self.stale[i] = False
                collect_stale(i)
            if self.count:
                run = self._run(i, self.page)
                if run is not None:
                    return i, run
                gfns = self._take(i, self.page, sl.npages, sl.base_gfn)
                if gfns.size:
                    return i, gfns
            elif not any(self.stale):
                return None
            self._next_slot()
        return None

    def _run(self, i, lo):
        """A PageRun from page lo if at least BATCH pages from it are pending
        (lo on a word boundary), else None."""
        if lo & 63:
            return None
        w = self.words[i]
        seg = w[lo >> 6:(lo >> 6) + RUN_PAGES // 64]
        if seg.size < BATCH // 64 or not bool(np.all(seg[:BATCH // 64] == np.uint64(_ONES))):
            return None
        full = seg == np.uint64(_ONES)
        words = seg.size if bool(full.all()) else int(np.argmin(full))
        return PageRun(lo, lo + 64 * words)

    def _take(self, i, lo, npages, base):
        w = self.words[i]
        out = []
        got = 0
        word = lo >> 6
        while word < w.size and got < BATCH:
            end = min(w.size, word + _WINDOW_WORDS)
            seg = w[word:end]
            if seg.any():
                g = bitmap_to_gfns(seg, min(npages - word * 64, seg.size * 64), base + word * 64)
                if word == lo >> 6:
                    g = g[g >= base + lo]
                if g.size:
                    g = g.copy()   # the scan's output buffer is reused
                    out.append(g[:BATCH - got])
                    got += out[-1].size
            word = end
        if not out:
            return np.zeros(0, dtype=np.uint64)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def consume(self, i, gfns, k):
        """The first k pages of batch gfns (slot i) were sent: clear their bits,
        move the cursor past them; past the slot's last page, on to the next."""
        if k <= 0:
            return
        sl = self.slots[i]
        if isinstance(gfns, PageRun):
            first, last = gfns.first, gfns.first + k - 1
        else:
            first, last = int(gfns[0]) - sl.base_gfn, int(gfns[k - 1]) - sl.base_gfn
        _clear_range(self.words[i], first, last + 1)
        self.count -= k
        self.page = last + 1
        if self.page >= sl.npages:
            self._next_slot()

    def _next_slot(self):
        self.slot_i += 1
        self.page = 0
        if self.slot_i >= len(self.slots):
            self.slot_i = 0
            self.rounds += 1

    def take_all(self, i):
        """Every pending gfn of slot i, cleared (the stop-and-copy pass)."""
        sl = self.slots[i]
        parts = []
        lo = 0
        while lo < sl.npages:
            g = self._take(i, lo, sl.npages, sl.base_gfn)
            if not g.size:
                break
            parts.append(g)
            lo = int(g[-1]) - sl.base_gfn + 1
        g = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        # only the words that held bits are written: a map that was never
        # filled (a lazily backed one) stays uncommitted
        self.words[i][(g - np.uint64(sl.base_gfn)) >> np.uint64(6)] = 0
        self.count -= g.size
        return g

    def add_gfns(self, gfns, bases, sample_ns=0):
        """Set the bits of gfns anywhere in the slots (bases: the slots'
        base gfns, ascending, as a uint64 array); returns how many were new."""
        if gfns.size == 0:
            return 0
        gfns = np.unique(gfns)
        cuts = np.append(np.searchsorted(gfns, bases), gfns.size)
        return sum(self.add(i, gfns[cuts[i]:cuts[i + 1]], sample_ns)
                   for i in range(len(self.slots)) if cuts[i + 1] > cuts[i])

    def take_every(self):
        """Every set gfn of every slot, cleared (ascending), or None if none."""
        if not self.count:
            return None
        return np.concatenate([self.take_all(i) for i in range(len(self.slots))])
