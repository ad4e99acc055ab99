/*
 * log_twolevel.c - the two-level dirty log proposed on kvm@ in 2010: the flat
 * leaf bitmap plus one summary bit per 2 MiB chunk (512 pages, 8 leaf words,
 * one cache line). A scan reads the summary and only the leaves of chunks
 * whose bit is set, so its cost follows the dirty chunks, not the guest size.
 *
 * Invariant: a set leaf bit implies its chunk's summary bit is set, except
 * while a writer is between its two steps below.
 *
 * Why no write is lost (all RMWs are seq_cst):
 *   writer:    fetch_or(leaf, bit); if (!(load(summary) & c)) fetch_or(summary, c)
 *   collector: fetch_and(summary, ~c); take leaves (xchg / fetch_and);
 *              if any leaf bit of the chunk is still set, fetch_or(summary, c)
 * If the writer's leaf RMW precedes the collector's take of that word, the
 * bit is taken now. Otherwise it follows the take, which follows the summary
 * clear; the writer's summary load then comes after the clear too, sees the
 * bit clear and sets it, so the next collect visits the chunk. A summary bit
 * set for a chunk whose leaves are empty is harmless (a wasted visit). The
 * re-set step keeps the invariant when a collect or CLEAR takes only part of
 * a chunk.
 */
#include "internal.h"

#define PREFETCH_CHUNKS 64 /* one summary word's worth of chunks in flight */

/* Chunks [c0, c1) whose summary bits are set, appended to out; returns n. */
static unsigned set_chunks(struct kd_slot *s, uint64_t sw, uint64_t c0, uint64_t c1,
			   uint64_t *out)
{
	uint64_t bits = __atomic_load_n(&s->summary[sw], __ATOMIC_SEQ_CST);
	unsigned n = 0;

	bits &= kd_range_mask(sw, c0, c1);
	while (bits) {
		out[n++] = sw * 64 + (uint64_t)__builtin_ctzll(bits);
		bits &= bits - 1;
	}
	return n;
}

static void prefetch_chunk(const struct kd_slot *s, uint64_t c)
{
	__builtin_prefetch(&s->dirty[c * KD_CHUNK_WORDS], 1, 3);
	__builtin_prefetch(&s->writable[c * KD_CHUNK_WORDS], 1, 3);
}

static bool chunk_has_bits(const struct kd_slot *s, uint64_t c)
{
	uint64_t w0 = c * KD_CHUNK_WORDS, w1 = w0 + KD_CHUNK_WORDS, acc = 0;

	if (w1 > s->nwords)
		w1 = s->nwords;
	for (uint64_t w = w0; w < w1; w++)
		acc |= __atomic_load_n(&s->dirty[w], __ATOMIC_SEQ_CST);
	return acc != 0;
}

static void summary_clear(struct kd_slot *s, uint64_t c)
{
	__atomic_fetch_and(&s->summary[c / 64], ~(1ull << (c % 64)), __ATOMIC_SEQ_CST);
}

static void summary_reset_if_needed(struct kd_slot *s, uint64_t c)
{
	if (chunk_has_bits(s, c))
		__atomic_fetch_or(&s->summary[c / 64], 1ull << (c % 64), __ATOMIC_SEQ_CST);
}

int kd_twolevel_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	uint64_t nchunks = (s->npages + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	uint64_t chunks[PREFETCH_CHUNKS], reprotected = 0;

	memset(bitmap, 0, s->nwords * 8);
	vm->user.summary_words_scanned += s->nsummary;
	for (uint64_t sw = 0; (sw = kd_find_nonzero_word(s->summary, sw, s->nsummary)) <
			      s->nsummary;
	     sw++) {
		unsigned n = set_chunks(s, sw, 0, nchunks, chunks);
		for (unsigned k = 0; k < n; k++)
			prefetch_chunk(s, chunks[k]);
		for (unsigned k = 0; k < n; k++) {
			uint64_t c = chunks[k], w0 = c * KD_CHUNK_WORDS, w1 = w0 + KD_CHUNK_WORDS;
			if (w1 > s->nwords)
				w1 = s->nwords;
			vm->user.words_scanned += w1 - w0;
			if (vm->manual_protect) {
				for (uint64_t w = w0; w < w1; w++)
					bitmap[w] = __atomic_load_n(&s->dirty[w], __ATOMIC_RELAXED);
				continue;
			}
			summary_clear(s, c);
			for (uint64_t w = w0; w < w1; w++) {
				if (!__atomic_load_n(&s->dirty[w], __ATOMIC_RELAXED))
					continue;
				bitmap[w] = __atomic_exchange_n(&s->dirty[w], 0, __ATOMIC_SEQ_CST);
				reprotected += kd_reprotect_word(s, w, bitmap[w]);
			}
			summary_reset_if_needed(s, c);
		}
	}
	kd_count_reprotect(vm, reprotected, true);
	return 0;
}

void kd_twolevel_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t num,
		       const uint64_t *mask)
{
	uint64_t reprotected = 0, nw = (num + 63) / 64, last_chunk = UINT64_MAX;

	for (uint64_t i = 0; i < nw; i++) {
		uint64_t w = first / 64 + i, m = mask[i], c = w / KD_CHUNK_WORDS;
		if (!m)
			continue;
		if (w == s->nwords - 1 && (s->npages & 63))
			m &= ~0ull >> (64 - (s->npages & 63));
		if (c != last_chunk) {
			if (last_chunk != UINT64_MAX)
				summary_reset_if_needed(s, last_chunk);
			summary_clear(s, c);
			last_chunk = c;
		}
		m &= __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST);
		reprotected += kd_reprotect_word(s, w, m);
	}
	if (last_chunk != UINT64_MAX)
		summary_reset_if_needed(s, last_chunk);
	vm->user.words_scanned += nw;
	kd_count_reprotect(vm, reprotected, false);
}

uint64_t kd_twolevel_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			     uint64_t *gfns, uint64_t cap, uint64_t *resume)
{
	uint64_t c0 = first / KD_CHUNK_PAGES, c1 = (end + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	uint64_t sw = c0 / 64, swend = (c1 + 63) / 64, scanned = 0;
	uint64_t chunks[PREFETCH_CHUNKS], n = 0, reprotected = 0;
	const bool bounded = cap < end - first;

	*resume = end;
	if (first == end)
		return 0;
	for (; (sw = kd_find_nonzero_word(s->summary, sw, swend)) < swend; sw++) {
		unsigned nc = set_chunks(s, sw, c0, c1, chunks);
		for (unsigned k = 0; k < nc; k++)
			prefetch_chunk(s, chunks[k]);
		for (unsigned k = 0; k < nc; k++) {
			uint64_t c = chunks[k], w0 = c * KD_CHUNK_WORDS, w1 = w0 + KD_CHUNK_WORDS;
			if (w0 < first / 64)
				w0 = first / 64;
			if (w1 > (end + 63) / 64)
				w1 = (end + 63) / 64;
			summary_clear(s, c);
			for (uint64_t w = w0; w < w1; w++) {
				uint64_t m = kd_range_mask(w, first, end), bits;
				scanned++;
				if (!(__atomic_load_n(&s->dirty[w], __ATOMIC_RELAXED) & m))
					continue;
				if (bounded && cap - n < 64) {
					*resume = w * 64 > first ? w * 64 : first;
					summary_reset_if_needed(s, c);
					goto done;
				}
				bits = __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST) & m;
				reprotected += kd_reprotect_word(s, w, bits);
				n = kd_emit_bits(bits, s->base_gfn + w * 64, gfns, n);
			}
			summary_reset_if_needed(s, c);
		}
	}
	sw = swend;
done:
	vm->user.summary_words_scanned += sw - c0 / 64 + (sw < swend);
	vm->user.words_scanned += scanned;
	kd_count_reprotect(vm, reprotected, false);
	return n;
}
