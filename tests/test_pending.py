"""The migration bitmap (migration/pending.py) against a plain Python set:
fill, add (new bits counted once), batches from the cursor in address order,
consume, wrap, per-slot stale collection, take_all."""
import collections

import numpy as np
import pytest

from pykvmdirty.migration import pending as pd

Slot = collections.namedtuple("Slot", "base_gfn npages")


def gfns(*xs):
    return np.array(xs, dtype=np.uint64)


@pytest.mark.parametrize("lo,hi", [(0, 1), (3, 64), (63, 65), (0, 128), (5, 300), (64, 128)])
def test_ranges_set_and_clear_exactly(lo, hi):
    w = np.zeros(6, dtype=np.uint64)
    pd._set_range(w, lo, hi)
    bits = np.unpackbits(w.view(np.uint8), bitorder="little")
    assert set(np.flatnonzero(bits)) == set(range(lo, hi))
    w[:] = np.uint64(pd._ONES)
    pd._clear_range(w, lo, hi)
    bits = np.unpackbits(w.view(np.uint8), bitorder="little")
    assert set(np.flatnonzero(bits == 0)) == set(range(lo, hi))


def test_add_counts_new_bits_once_and_batches_follow_the_cursor():
    slots = [Slot(0, 100), Slot(1000, 70)]
    p = pd.Pending(slots)
    assert p.add(0, gfns(5, 7, 7, 99), 1) == 3 and p.add(0, gfns(7, 8), 1) == 1
    assert p.add(1, gfns(1000, 1069), 2) == 2 and p.count == 6
    i, g = p.next_batch(lambda i: None)
    assert i == 0 and list(g) == [5, 7, 8, 99]
    p.consume(i, g, 2)                       # 5 and 7 went out
    assert p.count == 4 and p.page == 8
    p.add(0, gfns(6), 3)                     # behind the cursor: waits for the next round
    i, g = p.next_batch(lambda i: None)
    assert list(g) == [8, 99]
    p.consume(i, g, 2)                       # past the slot's last page: on to slot 1
    assert p.slot_i == 1
    i, g = p.next_batch(lambda i: None)
    assert i == 1 and list(g) == [1000, 1069]
    p.consume(i, g, 2)
    assert p.rounds == 1                     # wrapped to the first slot
    i, g = p.next_batch(lambda i: None)
    assert i == 0 and list(g) == [6]
    p.consume(i, g, 1)
    assert p.count == 0 and p.next_batch(lambda i: None) is None


def test_fill_take_all_and_stale_slots():
    slots = [Slot(0, 130), Slot(200, 3)]
    p = pd.Pending(slots)
    p.fill(0)
    assert p.count == 133 and p.slot_count(0) == 130 and p.slot_count(1) == 3
    assert list(p.take_all(1)) == [200, 201, 202] and p.count == 130
    p2 = pd.Pending(slots)
    p2.stale = [False, True]
    seen = []

    def collect(i):
        seen.append(i)
        p2.add(i, gfns(201), 9)
    i, g = p2.next_batch(collect)           # nothing in slot 0; slot 1 collected on entry
    assert seen == [1] and i == 1 and list(g) == [201]


def test_a_batch_is_at_most_batch_pages():
    slots = [Slot(0, pd.BATCH * 2 + 10)]
    p = pd.Pending(slots)
    p.fill(0)
    p.consume(0, gfns(0), 1)                 # off the word boundary: no run
    i, g = p.next_batch(lambda i: None)
    assert isinstance(g, np.ndarray)
    assert g.size == pd.BATCH and int(g[0]) == 1 and int(g[-1]) == pd.BATCH
    p.consume(i, g, 10)
    i, g = p.next_batch(lambda i: None)
    assert int(g[0]) == 11 and g.size == pd.BATCH


def test_runs_of_pending_pages_go_out_as_ranges_and_lose_nothing():
    slots = [Slot(1 << 20, pd.BATCH * 3 + 10)]
    p = pd.Pending(slots)
    p.fill(0)
    i, r = p.next_batch(lambda i: None)
    # whole words only: the last word holds 10 pages, not 64
    assert isinstance(r, pd.PageRun) and (r.first, r.stop) == (0, 3 * pd.BATCH)
    assert r.size == 3 * pd.BATCH
    p.consume(i, r, 1000)                    # the sender stopped after 1000 pages
    assert p.page == 1000 and p.count == 3 * pd.BATCH + 10 - 1000
    p.add(0, gfns((1 << 20) + 5), 1)         # behind the cursor: sent next round
    i, g = p.next_batch(lambda i: None)      # 1000 is not a word boundary: a list
    assert isinstance(g, np.ndarray) and int(g[0]) == (1 << 20) + 1000
    p.consume(i, g, g.size)
    left = p.take_all(0) - np.uint64(1 << 20)
    assert int(left[0]) == 5 and p.count == 0
    # a hole in the first BATCH pages: no run
    q = pd.Pending(slots)
    q.fill(0)
    pd._clear_range(q.words[0], 700, 701)
    i, g = q.next_batch(lambda i: None)
    assert isinstance(g, np.ndarray) and 700 not in set(g.tolist())


def test_pages_carried_between_syncs_are_a_set_per_slot():
    """What a ring reaper takes early is kept as bits (QEMU's dirty bitmap),
    not as a list that grows with every reap: the same hot page reaped a
    thousand times is one bit, and taking them gives each page once."""
    slots = [Slot(0, 1000), Slot(5000, 100)]
    carry = pd.Pending(slots)
    bases = np.array([0, 5000], dtype=np.uint64)
    for _ in range(1000):
        carry.add_gfns(gfns(7, 5001, 7, 999), bases)
    assert carry.count == 3
    assert list(carry.take_every()) == [7, 999, 5001]
    assert carry.count == 0 and carry.take_every() is None
    assert not any(w.any() for w in carry.words)


def test_a_dirty_bitmap_is_ored_in_whole():
    """Chunked clear's GET bitmap goes into the migration bitmap word by
    word: the bits newly set and the bits found, no gfn list."""
    slots = [Slot(100, 130)]
    p = pd.Pending(slots)
    p.add(0, gfns(100 + 3, 100 + 70), 1)
    bm = np.zeros(3, dtype=np.uint64)
    for rel in (3, 4, 64, 129):
        bm[rel // 64] |= np.uint64(1 << (rel % 64))
    assert p.or_bitmap(0, bm, 2) == (3, 4)       # 3 was pending already
    assert p.count == 5 and p.sample_ns[0] == 2
    assert list(p.take_all(0) - np.uint64(100)) == [3, 4, 64, 70, 129]
