/*
 * emu/hier_log.c - the hierarchical dirty log (geometry and contract in
 * hier_log.h): a collect costs what is dirty and the tree's height, not the
 * slot's size, and the leaves of the groups dirtied since the last collect
 * sit in the first few pages of a compact pool instead of being scattered
 * over a slot-sized bitmap.
 *
 * Memory. Every array is reserved with MAP_NORESERVE and never populated:
 * a page commits when first written. An 8 TiB slot reserves 256 MiB of pool,
 * 2 MiB of index and 520 KiB of summaries; 1000 dirty pages commit about
 * 1000 blocks (512 KiB) plus the index and level-0 pages they touch. At full
 * population the pool is the flat bitmap (rounded up to a group), the index
 * 4 bytes per 512-byte block (0.8%) and the summaries 1/512 of that (0.2%).
 * Blocks are handed out LIFO from the free list, so a steady working set
 * keeps reusing the same few pool pages. Clean blocks are given back only
 * while more than 2 x (the groups the last collector call visited) +
 * retire_slack are linked: a steady working set then pays nothing for
 * retirement (no second look at its groups' summaries), and the blocks kept
 * clean are bounded by that figure (3000 blocks, 750 KiB, for 1000 dirty
 * groups): a bound on memory, not a leak.
 *
 * Protection. A page is writable exactly when its leaf bit is set, as in the
 * other bitmap logs (core/internal.h): the writer's fetch_or that finds the bit
 * clear is the fault, and a collector that takes a bit re-protects its page.
 * A write to a writable page is one index load and one leaf load (no
 * memory) or RMW (with guest memory): no lock, no summary access.
 *
 * Why no write is lost. Writers W, one collector C; all RMWs and the index
 * stores/loads C relies on are seq_cst.
 * 1. Leaf and summaries. W: fetch_or(leaf) then, level by level upwards,
 *    load the bit and fetch_or it if clear, stopping at the first bit found
 *    set. C takes a level-0 word's bits with fetch_and BEFORE reading the
 *    leaves, and after visiting a chunk sets its bit again if the chunk
 *    still holds anything. If W's leaf RMW precedes C's take of that leaf,
 *    C takes the bit now. Otherwise it follows C's take, which follows C's
 *    clearing of the chunk's level-0 bit; W's load of that bit comes later
 *    still, so W finds it clear (or set again by someone who set the path
 *    above it, see below) and sets it.
 *    Above level 0, C only reads (so a steady working set's writers stop at
 *    level 0 and C spends no RMW above it). C clears a bit of level k >= 1
 *    only for a child word it found empty when it read it, and then with
 *    fetch_and, a fresh load of the child word, and fetch_or if the child
 *    holds anything again (drop_stale). A writer W that set a bit of that
 *    child word then loads the parent bit after its RMW: if that RMW came
 *    before C's fresh load, C sees it and sets the parent back; if after,
 *    W's load follows C's clear and W sets the parent itself. C never clears
 *    the bits on the path to a word it found non-empty, so a parent C sets
 *    back has its own path set. Invariant after both: a set bit of level k
 *    has its path to the root set, and a dirty leaf its level-0 bit: the
 *    next collect visits it. A summary bit over an empty subtree is
 *    harmless: one wasted visit, which clears it.
 * 2. Blocks. A group's block is taken under h->lock (the fault path's lock,
 *    like KVM's mmu_lock) and published in index[g]; the fast path reads the
 *    index without the lock. A block C leaves clean is given back by C's
 *    next call if its summary bits are still clear then, in three steps:
 *    (a) under the lock, unlink it (index[g] = 0); (b) sync_writers:
 *    every writer that could have read the old index has left its section;
 *    (c) under the lock, look again at the group's level-0 bits: all clear
 *    means the block is clean (every writer that set a leaf bit since C
 *    last took them has set the chunk's level-0 bit by now, (b), and only C
 *    clears those), and it goes to the free list; else the bits a late
 *    writer put there (it read the index before (a)), if any, are moved
 *    back: the block is linked again if the group still has none,
 *    else OR-ed into the group's new block, and the summaries above them set
 *    again as a writer would. So a bit is always either in the block the
 *    index names or in one waiting for (c), and a block is reused only after
 *    (b), when no writer can still hold it. A writer that finds index[g] = 0
 *    takes the lock and a block; the summaries are then argued as in 1 (C's
 *    index load follows its take of the level-0 bit, so a writer that C did
 *    not see sets that bit after the take).
 * 3. Contents. With guest memory the writer's store precedes its leaf RMW,
 *    which precedes C's take of the bit (xchg / fetch_and, or (c)'s xchg of
 *    a late block, then the RMW into the new block): C reads the page after
 *    taking the bit and sees the store.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/bits.h"
#include "core/mapping.h"
#include "core/ticket_lock.h"
#include "emu/hier_log.h"


/* A lazily backed array (core/mapping.h), its size kept for munmap. */
static void *lazy_map(uint64_t bytes, uint64_t *mapped)
{
	*mapped = bytes;
	return kd_map_reserve(bytes);
}

/* The fault path's lock (h->lock): core's ticket lock. */
static void lock(struct kd_hier *h)
{
	kd_spin_lock(h->lock);
}

static void unlock(struct kd_hier *h)
{
	kd_spin_unlock(h->lock);
}

static inline uint64_t *block_words(const struct kd_hier *h, uint32_t b)
{
	return &h->pool[(uint64_t)(b - 1) * KD_HIER_BLOCK_WORDS];
}

int kd_hier_init(struct kd_hier *h, uint64_t npages, bool initially_set,
		 void (*sync_writers)(void *), void *sync_ctx)
{
	uint64_t n;
	unsigned m = 0;

	memset(h, 0, sizeof(*h));
	if (!npages || npages > KD_MAX_SLOT_PAGES || !sync_writers)
		return -EINVAL;
	h->npages = npages;
	h->nwords = (npages + 63) / 64;
	h->nchunks = (npages + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	h->ngroups = (npages + KD_HIER_GROUP_PAGES - 1) / KD_HIER_GROUP_PAGES;
	h->sync_writers = sync_writers;
	h->sync_ctx = sync_ctx;
	h->retire_slack = KD_HIER_RETIRE_SLACK;
	n = h->nchunks;
	do { /* level k: one bit per node of level k - 1 (chunks for k = 0) */
		h->nlevel_words[h->nlevels] = (n + 63) / 64;
		h->level[h->nlevels] = lazy_map(h->nlevel_words[h->nlevels] * 8, &h->map_bytes[m]);
		h->map[m++] = h->level[h->nlevels];
		if (!h->level[h->nlevels])
			goto nomem;
		n = h->nlevel_words[h->nlevels++];
	} while (n > 1);
	/* a block per group, plus the ones unlinked and waiting for a sync */
	h->pool_cap = h->ngroups + KD_HIER_RETIRE_BATCH;
	h->index = lazy_map(h->ngroups * 4, &h->map_bytes[m]);
	h->map[m++] = h->index;
	h->pool = lazy_map(h->pool_cap * KD_HIER_BLOCK_WORDS * 8, &h->map_bytes[m]);
	h->map[m++] = h->pool;
	h->clean = lazy_map(h->ngroups * 4, &h->map_bytes[m]);
	h->map[m++] = h->clean;
	h->scratch = lazy_map(KD_HIER_SCRATCH_WORDS * 8, &h->map_bytes[m]);
	h->map[m++] = h->scratch;
	if (!h->index || !h->pool || !h->clean || !h->scratch)
		goto nomem;
	if (initially_set) {
		for (uint64_t g = 0; g < h->ngroups; g++) {
			uint64_t *w = block_words(h, (uint32_t)g + 1), w0 = g * KD_HIER_BLOCK_WORDS;
			for (unsigned i = 0; i < KD_HIER_BLOCK_WORDS; i++)
				w[i] = kd_range_mask(w0 + i, 0, npages);
			h->index[g] = (uint32_t)g + 1;
		}
		h->pool_top = h->blocks_live = h->ngroups;
		n = h->nchunks;
		for (unsigned k = 0; k < h->nlevels; k++) {
			for (uint64_t i = 0; i < h->nlevel_words[k]; i++)
				h->level[k][i] = kd_range_mask(i, 0, n);
			n = h->nlevel_words[k];
		}
	}
	return 0;
nomem:
	kd_hier_destroy(h);
	return -ENOMEM;
}

void kd_hier_destroy(struct kd_hier *h)
{
	for (unsigned i = 0; i < KD_HIER_MAX_LEVELS + 4; i++)
		if (h->map[i])
			munmap(h->map[i], h->map_bytes[i]);
	memset(h, 0, sizeof(*h));
}

void kd_hier_mark_summaries(struct kd_hier *h, uint64_t rel)
{
	uint64_t node = rel / KD_CHUNK_PAGES;

	for (unsigned k = 0; k < h->nlevels; k++, node /= 64) {
		uint64_t *w = &h->level[k][node / 64], bit = 1ull << (node % 64);
		if (__atomic_load_n(w, __ATOMIC_SEQ_CST) & bit)
			return; /* see 1. at the top */
		if (__atomic_fetch_or(w, bit, __ATOMIC_SEQ_CST) & bit)
			return;
	}
}

/* Under h->lock: a zeroed block (free list first, else the pool's next). */
static uint32_t block_take(struct kd_hier *h)
{
	uint32_t b = h->free_head;

	if (b) {
		uint64_t *w = block_words(h, b);
		h->free_head = (uint32_t)w[0];
		w[0] = 0;
	} else {
		/* cannot run out: pool_cap covers every group plus a batch of
		 * unlinked blocks, and a group links at most one block */
		b = (uint32_t)++h->pool_top;
	}
	/* under h->lock; the collector reads it without (retire_pending) */
	__atomic_store_n(&h->blocks_live, h->blocks_live + 1, __ATOMIC_RELAXED);
	return b;
}

/* Under h->lock: give back a block whose words are all zero. */
static void block_free(struct kd_hier *h, uint32_t b)
{
	block_words(h, b)[0] = h->free_head;
	h->free_head = b;
	__atomic_store_n(&h->blocks_live, h->blocks_live - 1, __ATOMIC_RELAXED);
}

bool kd_hier_mark_slow(struct kd_hier *h, uint64_t rel)
{
	uint32_t *slot = &h->index[rel / KD_HIER_GROUP_PAGES], b;
	uint64_t bit = 1ull << (rel & 63);

	lock(h);
	b = __atomic_load_n(slot, __ATOMIC_RELAXED);
	if (!b) {
		b = block_take(h);
		__atomic_store_n(slot, b, __ATOMIC_SEQ_CST);
	}
	unlock(h);
	if (__atomic_fetch_or(kd_hier_leaf(h, b, rel), bit, __ATOMIC_SEQ_CST) & bit)
		return false;
	kd_hier_mark_summaries(h, rel);
	return true;
}

/* The level-0 bits of group g's chunks. Once sync_writers has returned
 * ((c) of 2.), all clear means the group's unlinked block is clean, without
 * reading its lines: a writer sets a leaf bit's level-0 bit before leaving
 * its section (1.), and only the collector, which is here, clears level-0
 * bits. */
static uint64_t group_summary(const struct kd_hier *h, uint64_t g)
{
	uint64_t c0 = g * KD_HIER_GROUP_CHUNKS;

	return (__atomic_load_n(&h->level[0][c0 / 64], __ATOMIC_SEQ_CST) >> (c0 % 64)) &
	       ((1ull << KD_HIER_GROUP_CHUNKS) - 1);
}

/* (c) of 2. for a block with bits a late writer left: move them to where the
 * index points and set their summaries again. Under h->lock. */
static void block_restore(struct kd_hier *h, uint32_t g, uint32_t b)
{
	uint32_t *slot = &h->index[g], cur = __atomic_load_n(slot, __ATOMIC_SEQ_CST);
	uint64_t *w = block_words(h, b), *to;

	if (!cur)
		__atomic_store_n(slot, b, __ATOMIC_SEQ_CST);
	to = cur ? block_words(h, cur) : NULL;
	for (unsigned ch = 0; ch < KD_HIER_GROUP_CHUNKS; ch++) {
		uint64_t any = 0;
		for (unsigned i = ch * KD_HIER_CHUNK_WORDS; i < (ch + 1) * KD_HIER_CHUNK_WORDS; i++) {
			uint64_t bits = to ? __atomic_exchange_n(&w[i], 0, __ATOMIC_SEQ_CST)
					   : __atomic_load_n(&w[i], __ATOMIC_SEQ_CST);
			if (bits && to)
				__atomic_fetch_or(&to[i], bits, __ATOMIC_SEQ_CST);
			any |= bits;
		}
		if (any) /* as a writer would: bottom up (1. at the top) */
			kd_hier_mark_summaries(h, ((uint64_t)g * KD_HIER_GROUP_CHUNKS + ch) *
							  KD_CHUNK_PAGES);
	}
	if (to)
		block_free(h, b);
}

/* Give back the blocks collected in h->retired (steps (a)-(c) of 2.). The
 * caller saw their summary bits clear; a block whose summary bits are set
 * after the sync (a writer between its leaf and summary steps, or a late
 * one) is restored, so neither (a) nor (c) reads the leaves of a clean one. */
static void retire_flush(struct kd_hier *h, struct kd_hier_counts *c)
{
	uint32_t kept = 0;

	if (!h->nretired)
		return;
	lock(h); /* (a) */
	for (uint32_t i = 0; i < h->nretired; i++) {
		struct kd_hier_retired r = h->retired[i];
		if (__atomic_load_n(&h->index[r.group], __ATOMIC_SEQ_CST) != r.block)
			continue;
		__atomic_store_n(&h->index[r.group], 0, __ATOMIC_SEQ_CST);
		h->retired[kept++] = r;
	}
	unlock(h);
	h->nretired = 0;
	if (!kept)
		return;
	h->sync_writers(h->sync_ctx); /* (b) */
	lock(h); /* (c) */
	for (uint32_t i = 0; i < kept; i++) {
		struct kd_hier_retired r = h->retired[i];
		if (!group_summary(h, r.group)) {
			block_free(h, r.block);
			c->blocks_freed++;
		} else {
			block_restore(h, r.group, r.block);
		}
	}
	unlock(h);
}

/* A group whose block a collector left clean: given back by the next
 * collector call if it is still clean then (so a group dirtied again within
 * one collect interval keeps its block and its writers the fast path). */
static void retire_candidate(struct kd_hier *h, uint64_t g)
{
	if (h->nclean && h->clean[h->nclean - 1] == g)
		return; /* a walk visits groups in order: once each */
	h->clean[h->nclean++] = (uint32_t)g;
}

/* Give back the candidates of the previous call that are still clean,
 * 64 at a time: their summary lines are touched first so that the misses
 * overlap; a group dirtied again (its level-0 bits set, the common case of
 * a steady working set) is passed over without reading its index line. */
static void retire_pending(struct kd_hier *h, struct kd_hier_counts *c)
{
	if (h->retire_slack && __atomic_load_n(&h->blocks_live, __ATOMIC_RELAXED) <=
				       2 * h->groups_last + h->retire_slack) {
		h->nclean = 0; /* few enough: keep them linked (see Memory) */
		return;
	}
	for (uint64_t i0 = 0; i0 < h->nclean; i0 += 64) {
		uint64_t i1 = h->nclean - i0 < 64 ? h->nclean : i0 + 64, acc = 0;
		for (uint64_t i = i0; i < i1; i++)
			acc += __atomic_load_n(&h->level[0][h->clean[i] * KD_HIER_GROUP_CHUNKS / 64],
					       __ATOMIC_RELAXED);
		__asm__ volatile("" : : "r"(acc));
		for (uint64_t i = i0; i < i1; i++) {
			uint64_t g = h->clean[i];
			uint32_t b;
			if (group_summary(h, g)) /* dirty again: it keeps its block */
				continue;
			b = __atomic_load_n(&h->index[g], __ATOMIC_RELAXED);
			if (!b)
				continue;
			if (h->nretired == KD_HIER_RETIRE_BATCH)
				retire_flush(h, c);
			h->retired[h->nretired++] = (struct kd_hier_retired){(uint32_t)g, b};
		}
	}
	h->nclean = 0;
	retire_flush(h, c);
}

/* ---- the walk shared by get, copy and collect ---- */

enum walk_mode { WALK_COLLECT, WALK_GET, WALK_COPY };

#define BATCH_CHUNKS 64 /* chunks whose index and leaf misses overlap */

struct walk {
	struct kd_hier *h;
	enum walk_mode mode;
	bool take; /* not a copy: bits are taken, summaries maintained */
	uint64_t first, end;   /* pages */
	uint64_t wfirst, wend; /* leaf words */
	uint64_t c0, c1;       /* chunks */
	uint64_t *out;         /* gfns (collect) or bitmap (get, copy) */
	uint64_t n, cap, base_gfn, resume;
	bool bounded, stopped;
	bool whole;            /* first..end is the whole log */
	uint64_t last_group, groups; /* distinct groups visited (retire bound) */
	struct kd_hier_counts *c;
	/* a subtree's frontier below its root (visit_subtree) and the chunk
	 * batch: the collector's scratch in struct kd_hier */
	uint64_t *f1, *f0, *bc;
	unsigned bn;
};

/* Bits a take removed from leaf word w: clear their D bits (PML keeps
 * them apart, see struct kd_hier), then put them out as GET's bitmap word
 * or as gfns from out[cnt]. Returns the new gfn count. Plain arguments, not
 * the walk: gfns are uint64_t, so stores through out would reload k's. */
static inline uint64_t put_taken(uint64_t *writable, bool get, uint64_t base_gfn, uint64_t w,
				 uint64_t bits, uint64_t *out, uint64_t cnt)
{
	if (writable && bits)
		__atomic_fetch_and(&writable[w], ~bits, __ATOMIC_SEQ_CST);
	if (get) {
		out[w] = bits;
		return cnt;
	}
	for (uint64_t gfn0 = base_gfn + w * 64; bits; bits &= bits - 1)
		out[cnt++] = gfn0 + (uint64_t)__builtin_ctzll(bits);
	return cnt;
}

/* Chunk `chunk` with block b, whose level-0 bit (bit j of *l0) was taken
 * (not in copy mode): take its leaf words in range; give the bit back if
 * bits are left. */
static void visit_chunk(struct walk *k, uint64_t chunk, uint32_t b)
{
	struct kd_hier *h = k->h;
	uint64_t g = chunk / KD_HIER_GROUP_CHUNKS, w0 = chunk * KD_HIER_CHUNK_WORDS;
	uint64_t w1 = w0 + KD_HIER_CHUNK_WORDS, p1 = (chunk + 1) * KD_CHUNK_PAGES;
	uint64_t *l0 = &h->level[0][chunk / 64], *leaf;
	bool partial;
	unsigned nz = 0;

	if (!b)
		return; /* a late writer's bit: restored with its block, see 2. */
	if (g != k->last_group) {
		k->last_group = g;
		k->groups++;
	}
	if (p1 > h->npages)
		p1 = h->npages;
	partial = chunk * KD_CHUNK_PAGES < k->first || p1 > k->end;
	leaf = block_words(h, b) + (chunk % KD_HIER_GROUP_CHUNKS) * KD_HIER_CHUNK_WORDS -
	       chunk * KD_HIER_CHUNK_WORDS;
	if (w0 < k->wfirst)
		w0 = k->wfirst;
	if (w1 > k->wend)
		w1 = k->wend;
	k->c->words_scanned += w1 - w0;
	for (uint64_t w = w0; w < w1; w++) {
		uint64_t m = partial ? kd_range_mask(w, k->first, k->end) : ~0ull;
		nz |= (unsigned)((__atomic_load_n(&leaf[w], __ATOMIC_RELAXED) & m) != 0) << (w - w0);
	}
	while (nz) {
		uint64_t w = w0 + (uint64_t)__builtin_ctz(nz), bits;
		uint64_t m = partial ? kd_range_mask(w, k->first, k->end) : ~0ull;
		nz &= nz - 1;
		if (k->mode == WALK_COPY) {
			k->out[w] = __atomic_load_n(&leaf[w], __ATOMIC_RELAXED);
			continue;
		}
		if (k->bounded && k->cap - k->n < 64) {
			k->resume = w * 64 > k->first ? w * 64 : k->first;
			k->stopped = true;
			break;
		}
		bits = m == ~0ull ? __atomic_exchange_n(&leaf[w], 0, __ATOMIC_SEQ_CST)
				  : __atomic_fetch_and(&leaf[w], ~m, __ATOMIC_SEQ_CST) & m;
		k->c->reprotected += (uint64_t)__builtin_popcountll(bits);
		k->n = put_taken(h->writable, k->mode == WALK_GET, k->base_gfn, w, bits, k->out, k->n);
	}
	if (!k->take)
		return;
	if (partial || k->stopped) {
		uint64_t acc = 0;
		for (unsigned i = 0; i < KD_HIER_CHUNK_WORDS; i++)
			acc |= __atomic_load_n(&leaf[chunk * KD_HIER_CHUNK_WORDS + i], __ATOMIC_SEQ_CST);
		if (acc) {
			__atomic_fetch_or(l0, 1ull << (chunk % 64), __ATOMIC_SEQ_CST);
			return;
		}
	}
	retire_candidate(h, g);
}

/* The batch of a take over the whole log (collect or GET, every chunk
 * wholly in range): one tight loop, state in locals (gfns are uint64_t like
 * k's fields: every store through k->out would reload them). Takes chunks
 * in order until one might not fit a bounded collect (each non-zero leaf
 * word can yield 64 gfns: writers may add bits); returns how many it took,
 * and visit_chunk does the rest. Each chunk is left clean: its group is a
 * retire candidate (once: a walk visits groups in order). */
static unsigned take_whole_batch(struct walk *k, const uint32_t *blocks)
{
	struct kd_hier *h = k->h;
	uint64_t *out = k->out, *writable = h->writable, cnt = k->n, rep = 0, words = 0;
	uint64_t last_g = k->last_group, groups = k->groups, base = k->base_gfn;
	const bool get = k->mode == WALK_GET;
	unsigned i;

	for (i = 0; i < k->bn; i++) {
		uint64_t ch = k->bc[i], g = ch / KD_HIER_GROUP_CHUNKS, w0 = ch * KD_HIER_CHUNK_WORDS;
		uint64_t *leaf;
		unsigned nz = 0;

		if (!blocks[i])
			continue; /* a late writer's bit: restored with its block, see 2. */
		leaf = block_words(h, blocks[i]) + (ch % KD_HIER_GROUP_CHUNKS) * KD_HIER_CHUNK_WORDS;
#pragma GCC unroll 8
		for (unsigned j = 0; j < KD_HIER_CHUNK_WORDS; j++)
			nz |= (unsigned)(__atomic_load_n(&leaf[j], __ATOMIC_RELAXED) != 0) << j;
		if (k->bounded && k->cap - cnt < 64ull * (unsigned)__builtin_popcount(nz))
			break;
		words += KD_HIER_CHUNK_WORDS;
		for (; nz; nz &= nz - 1) {
			unsigned j = (unsigned)__builtin_ctz(nz);
			uint64_t bits = __atomic_exchange_n(&leaf[j], 0, __ATOMIC_SEQ_CST);
			rep += (uint64_t)__builtin_popcountll(bits);
			cnt = put_taken(writable, get, base, w0 + j, bits, out, cnt);
		}
		if (g != last_g) {
			last_g = g;
			groups++;
			retire_candidate(h, g);
		}
	}
	k->n = cnt;
	k->last_group = last_g;
	k->groups = groups;
	k->c->reprotected += rep;
	k->c->words_scanned += words;
	return i;
}

/* The batched chunks: load their index entries, then touch their leaf
 * lines, with independent loads (their misses overlap; unlike a prefetch a
 * load that misses the TLB is never dropped), then take them in order (the
 * takes are exchanges, which would serialise the misses). */
static void flush_chunks(struct walk *k)
{
	struct kd_hier *h = k->h;
	uint32_t blocks[BATCH_CHUNKS + 64];
	uint64_t acc = 0;
	unsigned i = 0;

	for (unsigned j = 0; j < k->bn; j++) /* after the take of the level-0 bit (1. and 2.) */
		blocks[j] = __atomic_load_n(&h->index[k->bc[j] / KD_HIER_GROUP_CHUNKS], __ATOMIC_SEQ_CST);
	for (unsigned j = 0; j < k->bn; j++)
		if (blocks[j])
			acc += __atomic_load_n(block_words(h, blocks[j]) +
						       (k->bc[j] % KD_HIER_GROUP_CHUNKS) * KD_HIER_CHUNK_WORDS,
					       __ATOMIC_RELAXED);
	__asm__ volatile("" : : "r"(acc)); /* keep the touches */
	if (k->whole && k->take && !k->stopped)
		i = take_whole_batch(k, blocks);
	for (; i < k->bn; i++) {
		uint64_t ch = k->bc[i];
		if (k->stopped) { /* give back what was not visited */
			if (k->take)
				__atomic_fetch_or(&h->level[0][ch / 64], 1ull << (ch % 64),
						  __ATOMIC_SEQ_CST);
			continue;
		}
		visit_chunk(k, ch, blocks[i]);
	}
	k->bn = 0;
}

/* Bits of level word wi in range: taken (cleared) at level 0 unless
 * copying, read only above (1. at the top). *empty: the whole word was 0. */
static inline __attribute__((always_inline)) uint64_t
take_bits(struct walk *k, unsigned lvl, uint64_t wi, bool *empty)
{
	uint64_t *word = &k->h->level[lvl][wi];
	uint64_t full = __atomic_load_n(word, __ATOMIC_SEQ_CST), bits = full;

	if (!k->whole) /* a range: the bits of this level's nodes inside it */
		bits &= kd_range_mask(wi, k->c0 >> (6 * lvl), ((k->c1 - 1) >> (6 * lvl)) + 1);

	k->c->summary_words_scanned++;
	*empty = !full;
	if (bits && k->take && lvl == 0)
		bits &= __atomic_fetch_and(word, ~bits, __ATOMIC_SEQ_CST);
	return bits;
}

static uint64_t touch_words(const uint64_t *level, const uint64_t *idx, unsigned n)
{
	uint64_t acc = 0;
	for (unsigned i = 0; i < n; i++)
		acc += __atomic_load_n(&level[idx[i]], __ATOMIC_RELAXED);
	return acc;
}

/* A level-lvl bit (lvl >= 1) whose child word `child` of level lvl - 1
 * was found empty: clear it, then look at the child again and set it back
 * if a writer filled the child meanwhile (the collector's step in 1.). */
static void drop_stale(struct walk *k, unsigned lvl, uint64_t child)
{
	uint64_t *word = &k->h->level[lvl][child / 64], bit = 1ull << (child % 64);

	__atomic_fetch_and(word, ~bit, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&k->h->level[lvl - 1][child], __ATOMIC_SEQ_CST))
		__atomic_fetch_or(word, bit, __ATOMIC_SEQ_CST);
}

/* Frontier entries found empty carry this flag (word indices are < 2^40). */
#define STALE (1ull << 63)

/*
 * The subtree under word wi of level lvl <= 2, breadth first so that the
 * misses of a whole level overlap: take the root's bits, list its children
 * (f1), touch and take them, list theirs (f0), touch them, then take the
 * level-0 words one by one into the chunk batch. Every bit is taken before
 * its child is read, and given back after the whole subtree is done if its
 * child is left non-empty: 1.'s order, one level at a time.
 */
static void visit_subtree(struct walk *k, unsigned lvl, uint64_t wi)
{
	struct kd_hier *h = k->h;
	uint64_t bits, acc = 0;
	unsigned n1 = 0, n0 = 0;
	bool empty;

	if (lvl == 0) {
		k->f0[n0++] = wi;
	} else {
		bits = take_bits(k, lvl, wi, &empty);
		for (; bits; bits &= bits - 1) {
			uint64_t child = wi * 64 + (uint64_t)__builtin_ctzll(bits);
			if (lvl == 2)
				k->f1[n1++] = child;
			else
				k->f0[n0++] = child;
		}
		if (lvl == 2) {
			acc += touch_words(h->level[1], k->f1, n1);
			for (unsigned i = 0; i < n1; i++) {
				for (bits = take_bits(k, 1, k->f1[i], &empty); bits; bits &= bits - 1)
					k->f0[n0++] = k->f1[i] * 64 + (uint64_t)__builtin_ctzll(bits);
				k->f1[i] |= empty ? STALE : 0;
			}
		}
		acc += touch_words(h->level[0], k->f0, n0);
	}
	__asm__ volatile("" : : "r"(acc));
	for (unsigned i = 0; i < n0 && !k->stopped; i++) {
		for (bits = take_bits(k, 0, k->f0[i], &empty); bits; bits &= bits - 1)
			k->bc[k->bn++] = k->f0[i] * 64 + (uint64_t)__builtin_ctzll(bits);
		k->f0[i] |= empty ? STALE : 0;
		if (k->bn >= BATCH_CHUNKS)
			flush_chunks(k);
	}
	flush_chunks(k);
	if (!k->take)
		return;
	if (lvl >= 1)
		for (unsigned i = 0; i < n0; i++)
			if (k->f0[i] & STALE)
				drop_stale(k, 1, k->f0[i] & ~STALE);
	if (lvl == 2)
		for (unsigned i = 0; i < n1; i++)
			if (k->f1[i] & STALE)
				drop_stale(k, 2, k->f1[i] & ~STALE);
}

/* Levels above 2, depth first: read, visit the children, drop the bits
 * of children found empty. */
static void visit_word(struct walk *k, unsigned lvl, uint64_t wi)
{
	bool empty;
	uint64_t bits = take_bits(k, lvl, wi, &empty);

	while (bits && !k->stopped) {
		uint64_t child = wi * 64 + (uint64_t)__builtin_ctzll(bits);
		bool stale = !__atomic_load_n(&k->h->level[lvl - 1][child], __ATOMIC_SEQ_CST);
		bits &= bits - 1;
		if (lvl - 1 <= 2)
			visit_subtree(k, lvl - 1, child);
		else
			visit_word(k, lvl - 1, child);
		if (stale && k->take)
			drop_stale(k, lvl, child);
	}
}

static void walk_run(struct walk *k)
{
	k->take = k->mode != WALK_COPY;
	k->f1 = k->h->scratch;
	k->f0 = k->f1 + 64;
	k->bc = k->f0 + 64 * 64;
	k->wfirst = k->first / 64;
	k->wend = (k->end + 63) / 64;
	k->c0 = k->first / KD_CHUNK_PAGES;
	k->c1 = (k->end + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	k->whole = k->first == 0 && k->end == k->h->npages;
	k->last_group = UINT64_MAX;
	k->resume = k->end;
	if (k->take)
		retire_pending(k->h, k->c);
	if (k->first < k->end) {
		if (k->h->nlevels - 1 <= 2)
			visit_subtree(k, k->h->nlevels - 1, 0);
		else
			visit_word(k, k->h->nlevels - 1, 0);
	}
	if (k->take)
		k->h->groups_last = k->groups;
}

void kd_hier_get(struct kd_hier *h, uint64_t *bitmap, bool copy_only, struct kd_hier_counts *c)
{
	struct walk k = {.h = h, .mode = copy_only ? WALK_COPY : WALK_GET, .first = 0,
			 .end = h->npages, .out = bitmap, .c = c};

	memset(bitmap, 0, h->nwords * 8); /* KVM's layout: every word is written */
	walk_run(&k);
}

uint64_t kd_hier_collect(struct kd_hier *h, uint64_t first, uint64_t end, uint64_t base_gfn,
			 uint64_t *gfns, uint64_t cap, uint64_t *resume, struct kd_hier_counts *c)
{
	struct walk k = {.h = h, .mode = WALK_COLLECT, .first = first, .end = end, .out = gfns,
			 .cap = cap, .base_gfn = base_gfn, .bounded = cap < end - first, .c = c};

	walk_run(&k);
	*resume = k.resume;
	return k.n;
}

/* Level-0 bit of a chunk left with bits after a CLEAR: set again; a chunk
 * left clean may free its block. */
static void clear_done_chunk(struct kd_hier *h, uint64_t chunk, uint32_t b)
{
	const uint64_t *leaf = block_words(h, b) + (chunk % KD_HIER_GROUP_CHUNKS) * KD_HIER_CHUNK_WORDS;
	uint64_t acc = 0;

	for (unsigned i = 0; i < KD_HIER_CHUNK_WORDS; i++)
		acc |= __atomic_load_n(&leaf[i], __ATOMIC_SEQ_CST);
	if (acc) /* not inside a walk: the levels above may be clear too */
		kd_hier_mark_summaries(h, chunk * KD_CHUNK_PAGES);
	else
		retire_candidate(h, chunk / KD_HIER_GROUP_CHUNKS);
}

void kd_hier_clear(struct kd_hier *h, uint64_t first, uint64_t num, const uint64_t *mask,
		   struct kd_hier_counts *c)
{
	uint64_t nw = (num + 63) / 64, chunk = UINT64_MAX;
	uint32_t b = 0;

	retire_pending(h, c);
	for (uint64_t i = 0; i < nw; i++) {
		uint64_t w = first / 64 + i, m = mask[i] & kd_range_mask(w, first, first + num);
		if (!m)
			continue;
		if (w / KD_HIER_CHUNK_WORDS != chunk) {
			if (b)
				clear_done_chunk(h, chunk, b);
			chunk = w / KD_HIER_CHUNK_WORDS;
			/* no block: nothing of the chunk is dirty (a late
			 * writer's bits are restored with their block) */
			b = __atomic_load_n(&h->index[chunk / KD_HIER_GROUP_CHUNKS], __ATOMIC_SEQ_CST);
			if (b) /* clear first, as a collect's take (1. at the top) */
				__atomic_fetch_and(&h->level[0][chunk / 64], ~(1ull << (chunk % 64)),
						   __ATOMIC_SEQ_CST);
		}
		if (!b)
			continue;
		m &= __atomic_fetch_and(kd_hier_leaf(h, b, w * 64), ~m, __ATOMIC_SEQ_CST);
		c->reprotected += (uint64_t)__builtin_popcountll(m);
		if (h->writable && m)
			__atomic_fetch_and(&h->writable[w], ~m, __ATOMIC_SEQ_CST);
	}
	if (b)
		clear_done_chunk(h, chunk, b);
	c->words_scanned += nw;
}

void kd_hier_memory(const struct kd_hier *h, uint64_t *reserved, uint64_t *resident)
{
	for (unsigned i = 0; i < KD_HIER_MAX_LEVELS + 4; i++) {
		if (!h->map[i])
			continue;
		*reserved += kd_mapped_bytes(h->map_bytes[i]);
		*resident += kd_resident_bytes(h->map[i], h->map_bytes[i]);
	}
}

uint64_t kd_hier_blocks_live(const struct kd_hier *h)
{
	return __atomic_load_n(&h->blocks_live, __ATOMIC_RELAXED);
}
