/*
 * hier_log.h - the hierarchical dirty log of one memslot (emu/hier_log.c): N
 * levels of 64-ary summaries over 2 MiB chunks, leaf blocks from a compact,
 * lazily backed pool. Self-contained: it knows pages and words, not VMs
 * (of core it uses the leaf headers only: ticket lock, bits, mappings).
 *
 * Geometry. A chunk is 512 pages (8 leaf words, one cache line). A group is
 * KD_HIER_GROUP_CHUNKS consecutive chunks; the leaves of a group live in one
 * pool block (64 words, 512 bytes), taken from the pool on the group's first
 * dirtying and given back when a collect or CLEAR has left it clean and it
 * is still clean at the next collector call, once more blocks are linked
 * than the bound of hier_log.c (Memory) keeps. index[g] names the block of
 * group g (block number + 1; 0 = none, so the lazily
 * backed, never-touched index reads as "no block"). Level 0 holds one bit
 * per chunk, level k+1 one bit per word of level k, up to a single word.
 * Leaf bit set == page dirty == page writable (write protection): the fault
 * that makes a page writable is the RMW that sets its leaf bit.
 *
 * Contract with the caller:
 *  - kd_hier_write/kd_hier_mark run concurrently with anything, but only
 *    inside a writer section (a vCPU's guest entry); sync_writers(ctx) must
 *    return only after every section open when it was called has closed
 *    (KVM: kick the vCPUs out of guest mode after a TLB flush).
 *  - every other call is made by one collector at a time (vm->lock).
 */
#ifndef KD_LOG_HIER_H
#define KD_LOG_HIER_H

#include <stdbool.h>
#include <stdint.h>

#include "kvmdirty/vm.h"

#define KD_HIER_CHUNK_WORDS (KD_CHUNK_PAGES / 64u) /* 8 */
#define KD_HIER_GROUP_CHUNKS 8u /* 8, not 4: half the index (0.8%), the same collect */
#define KD_HIER_GROUP_PAGES (KD_CHUNK_PAGES * KD_HIER_GROUP_CHUNKS) /* 4096 */
#define KD_HIER_BLOCK_WORDS (KD_HIER_CHUNK_WORDS * KD_HIER_GROUP_CHUNKS) /* 64 */
#define KD_HIER_MAX_LEVELS 6u  /* 64^6 chunks: far beyond 2^31 pages */
#define KD_HIER_RETIRE_BATCH 256u /* blocks unlinked per sync_writers call */
#define KD_HIER_RETIRE_SLACK 1024u /* clean blocks kept linked beyond 2 x the working set */
#define KD_HIER_SCRATCH_WORDS (64u + 64u * 64u + 128u)

struct kd_hier_counts {
	uint64_t words_scanned;         /* leaf words read by get/clear/collect */
	uint64_t summary_words_scanned; /* summary words read (all levels) */
	uint64_t reprotected;           /* leaf bits taken (pages protected again) */
	uint64_t blocks_freed;          /* pool blocks given back */
};

struct kd_hier_retired {
	uint32_t group, block; /* block number + 1 */
};

struct kd_hier {
	uint64_t npages, nwords, nchunks, ngroups;
	unsigned nlevels;
	uint64_t *level[KD_HIER_MAX_LEVELS]; /* lazily backed */
	uint64_t nlevel_words[KD_HIER_MAX_LEVELS];
	uint32_t *index; /* per group: block + 1, lazily backed */
	uint64_t *pool;  /* blocks of KD_HIER_BLOCK_WORDS words, lazily backed */
	/* Protection kept apart from the log (PML: the D bits), flat layout, or
	 * NULL when the leaf bit is the protection. A collector clears the
	 * writable bits of exactly the leaf bits it takes. Owned by the caller. */
	uint64_t *writable;
	uint64_t pool_cap; /* blocks reserved (address space only) */
	uint64_t pool_top; /* blocks ever handed out: the committed prefix */
	uint32_t free_head; /* first free block + 1; the next one is in word 0 */
	uint64_t blocks_live; /* linked or awaiting sync */
	/* Retirement bound (hier_log.c, Memory): groups the last collect or
	 * GET visited, and the slack; 0 = give back every clean block at the
	 * next collector call (the tests' setting). */
	uint64_t groups_last;
	uint32_t retire_slack;
	unsigned lock[2];   /* the fault path's lock (KVM: mmu_lock), core/ticket_lock.h */
	/* Collector only: groups a collector call left clean (given back by
	 * the next call if still clean; lazily backed, one entry per group),
	 * and blocks unlinked, waiting for sync_writers. */
	uint32_t *clean;
	uint64_t nclean;
	struct kd_hier_retired retired[KD_HIER_RETIRE_BATCH];
	uint32_t nretired;
	/* Collector only: a walk's frontier below a level-2 word and its chunk
	 * batch (hier_log.c, visit_subtree): KD_HIER_SCRATCH_WORDS, lazily
	 * backed like the rest (a walk touches the entries it fills). */
	uint64_t *scratch;
	void (*sync_writers)(void *ctx);
	void *sync_ctx;
	/* mappings, for munmap and for kd_hier_memory */
	void *map[KD_HIER_MAX_LEVELS + 4];
	uint64_t map_bytes[KD_HIER_MAX_LEVELS + 4];
};

/* Create the log of npages (1..KD_MAX_SLOT_PAGES) pages; all bits set (and
 * every block taken) with initially_set. 0, -EINVAL or -ENOMEM. */
int kd_hier_init(struct kd_hier *h, uint64_t npages, bool initially_set,
		 void (*sync_writers)(void *), void *sync_ctx);
void kd_hier_destroy(struct kd_hier *h);

/* Writer side, slow path: take a block for the page's group (under the lock)
 * and set its bit; returns true if the bit was clear (a fault). */
bool kd_hier_mark_slow(struct kd_hier *h, uint64_t rel);
/* Set the summary bits above chunk rel / 512, bottom up, stopping at the
 * first one found set (see hier_log.c for why that is safe). */
void kd_hier_mark_summaries(struct kd_hier *h, uint64_t rel);

static inline uint64_t *kd_hier_leaf(const struct kd_hier *h, uint32_t block, uint64_t rel)
{
	return &h->pool[(uint64_t)(block - 1) * KD_HIER_BLOCK_WORDS +
			((rel / 64) % KD_HIER_BLOCK_WORDS)];
}

/*
 * A write of page rel under write protection: returns true if it faulted
 * (the page was protected and is now writable and dirty). ordered: the
 * caller stored guest memory before and needs that store ordered before the
 * log bit (an RMW even on the writable fast path, as emu/wp_write.c explains).
 */
static inline bool kd_hier_write(struct kd_hier *h, uint64_t rel, bool ordered)
{
	uint32_t b = __atomic_load_n(&h->index[rel / KD_HIER_GROUP_PAGES], __ATOMIC_ACQUIRE);
	uint64_t bit = 1ull << (rel & 63), *w;

	if (__builtin_expect(!b, 0))
		return kd_hier_mark_slow(h, rel);
	w = kd_hier_leaf(h, b, rel);
	if (!ordered && (__atomic_load_n(w, __ATOMIC_RELAXED) & bit))
		return false;
	if (__atomic_fetch_or(w, bit, __ATOMIC_SEQ_CST) & bit)
		return false;
	/* the chunk's level-0 bit is usually set already: test it inline */
	if (!(__atomic_load_n(&h->level[0][rel / KD_CHUNK_PAGES / 64], __ATOMIC_SEQ_CST) &
	      (1ull << (rel / KD_CHUNK_PAGES % 64))))
		kd_hier_mark_summaries(h, rel);
	return true;
}

/* Mark page rel dirty (a PML drain, or any fault): same as a write. */
static inline void kd_hier_mark(struct kd_hier *h, uint64_t rel)
{
	kd_hier_write(h, rel, true);
}

/* Prefetch what a write of page rel will touch, in two stages: the index
 * entry first (far ahead), then, once it is likely cached, the leaf word
 * it names (nearer). A stale index read here is harmless: a hint only. */
static inline void kd_hier_prefetch_index(const struct kd_hier *h, uint64_t rel)
{
	__builtin_prefetch(&h->index[rel / KD_HIER_GROUP_PAGES], 0, 3);
}

static inline void kd_hier_prefetch_leaf(const struct kd_hier *h, uint64_t rel)
{
	uint32_t b = __atomic_load_n(&h->index[rel / KD_HIER_GROUP_PAGES], __ATOMIC_RELAXED);

	if (b)
		__builtin_prefetch(kd_hier_leaf(h, b, rel), 1, 3);
}

/*
 * Collector side (one at a time). All three re-protect exactly the bits
 * they take, maintain the summaries and give clean blocks back.
 * get: KVM_GET_DIRTY_LOG into bitmap (s->nwords words, flat KVM layout);
 *      with copy_only (manual protect) a snapshot that takes nothing.
 * clear: KVM_CLEAR_DIRTY_LOG of [first, first + num) (first % 64 == 0).
 * collect: take the dirty pages of [first, end) as sorted gfns (base_gfn +
 *      page); bounded by cap (cap >= 64 or >= end - first); *resume = the
 *      first page not taken (end when done).
 */
void kd_hier_get(struct kd_hier *h, uint64_t *bitmap, bool copy_only, struct kd_hier_counts *c);
void kd_hier_clear(struct kd_hier *h, uint64_t first, uint64_t num, const uint64_t *mask,
		   struct kd_hier_counts *c);
uint64_t kd_hier_collect(struct kd_hier *h, uint64_t first, uint64_t end, uint64_t base_gfn,
			 uint64_t *gfns, uint64_t cap, uint64_t *resume, struct kd_hier_counts *c);

/* Adds the bytes the log's mappings reserve and those resident now
 * (mincore) to *reserved and *resident; and the blocks in use. */
void kd_hier_memory(const struct kd_hier *h, uint64_t *reserved, uint64_t *resident);
uint64_t kd_hier_blocks_live(const struct kd_hier *h);

#endif /* KD_LOG_HIER_H */
