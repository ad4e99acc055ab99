/*
 * emu/twolevel.c - the two-level dirty log proposed on kvm@ in 2010: the flat
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
#include "emu/emu.h"

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

/* Touch a batch of chunks' lines with independent loads: unlike a prefetch,
 * a load that misses the TLB is never dropped, and the out-of-order core
 * overlaps them all before the first locked instruction waits. */
static uint64_t touch_chunks(const struct kd_slot *s, const uint64_t *chunks, unsigned n)
{
	uint64_t acc = 0;
	for (unsigned k = 0; k < n; k++)
		acc += __atomic_load_n(&s->dirty[chunks[k] * KD_CHUNK_WORDS], __ATOMIC_RELAXED) +
		       (s->writable == s->dirty
				? 0
				: __atomic_load_n(&s->writable[chunks[k] * KD_CHUNK_WORDS],
						  __ATOMIC_RELAXED));
	return acc;
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

static int twolevel_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	uint64_t nchunks = (s->npages + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	uint64_t chunks[PREFETCH_CHUNKS], reprotected = 0;

	memset(bitmap, 0, s->nwords * 8);
	vm->user.summary_words_scanned += s->nsummary;
	for (uint64_t sw = 0; (sw = kd_find_nonzero_word(s->summary, sw, s->nsummary)) <
			      s->nsummary;
	     sw++) {
		unsigned n = set_chunks(s, sw, 0, nchunks, chunks);
		touch_chunks(s, chunks, n);
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

static int twolevel_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
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
	return 0;
}

/*
 * Collect takes the summary bits of a whole summary word with one RMW, then
 * visits the chunks in batches of up to PREFETCH_CHUNKS, touching every
 * batch's leaf lines first so their misses overlap. A chunk that lies wholly
 * in the range and is taken word by word needs no summary re-set (a writer
 * racing with the take sets the summary bit itself, see above); a partial
 * chunk, or chunks left over when `gfns` fills, get the re-set check.
 */
static int twolevel_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			    uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t c0 = first / KD_CHUNK_PAGES, c1 = (end + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	uint64_t sw = c0 / 64, swend = (c1 + 63) / 64, scanned = 0;
	uint64_t chunks[PREFETCH_CHUNKS + 64], n = 0, reprotected = 0, touched = 0;
	const uint64_t wfirst = first / 64, wlast = (end + 63) / 64;
	const bool bounded = cap < end - first;

	*resume = end;
	*count = 0;
	if (first == end)
		return 0;
	while (sw < swend) {
		unsigned nc = 0;
		while (nc < PREFETCH_CHUNKS &&
		       (sw = kd_find_nonzero_word(s->summary, sw, swend)) < swend) {
			uint64_t m = kd_range_mask(sw, c0, c1), bits;
			bits = __atomic_load_n(&s->summary[sw], __ATOMIC_RELAXED) & m;
			if (bits)
				bits &= __atomic_fetch_and(&s->summary[sw], ~bits, __ATOMIC_SEQ_CST);
			while (bits) {
				chunks[nc++] = sw * 64 + (uint64_t)__builtin_ctzll(bits);
				bits &= bits - 1;
			}
			sw++;
		}
		touched += touch_chunks(s, chunks, nc);
		for (unsigned k = 0; k < nc; k++) {
			uint64_t c = chunks[k], w0 = c * KD_CHUNK_WORDS, w1 = w0 + KD_CHUNK_WORDS;
			bool partial = false;
			if (w0 < wfirst || w0 * 64 < first) {
				w0 = wfirst;
				partial = true;
			}
			if (w1 > wlast || w1 * 64 > end) {
				w1 = wlast;
				partial = partial || w1 * 64 != end || end != s->npages;
			}
			/* which words of the chunk have bits: branch-free, so a
			 * random dirty word costs no mispredicted branches */
			unsigned nz = 0;
			for (uint64_t w = w0; w < w1; w++) {
				uint64_t m = partial ? kd_range_mask(w, first, end) : ~0ull;
				nz |= (unsigned)((__atomic_load_n(&s->dirty[w], __ATOMIC_RELAXED) & m) != 0)
				      << (w - w0);
			}
			scanned += w1 - w0;
			while (nz) {
				uint64_t w = w0 + (uint64_t)__builtin_ctz(nz), bits;
				uint64_t m = partial ? kd_range_mask(w, first, end) : ~0ull;
				nz &= nz - 1;
				if (bounded && cap - n < 64) {
					*resume = w * 64 > first ? w * 64 : first;
					for (; k < nc; k++) /* give back what was not taken */
						summary_reset_if_needed(s, chunks[k]);
					goto done;
				}
				bits = m == ~0ull
					       ? __atomic_exchange_n(&s->dirty[w], 0, __ATOMIC_SEQ_CST)
					       : __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST) & m;
				reprotected += kd_reprotect_word(s, w, bits);
				n = kd_emit_bits(bits, s->base_gfn + w * 64, gfns, n);
			}
			if (partial)
				summary_reset_if_needed(s, c);
		}
	}
done:
	__asm__ volatile("" : : "r"(touched)); /* keep the touches */
	vm->user.summary_words_scanned += (sw < swend ? sw + 1 : swend) - c0 / 64;
	vm->user.words_scanned += scanned;
	kd_count_reprotect(vm, reprotected, false);
	*count = n;
	return 0;
}

static int twolevel_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	uint64_t nchunks = (s->npages + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
	int r = kd_flat_log_alloc(vm, s);

	if (r)
		return r;
	s->nsummary = (nchunks + 63) / 64;
	s->summary = kd_bitmap_alloc(s->nsummary, vm->manual_protect & KD_INITIALLY_SET, nchunks);
	if (!s->summary) {
		kd_slot_log_free(vm, s);
		return -ENOMEM;
	}
	kd_emu_log_enabled(vm, s);
	return 0;
}

const struct kd_backend_ops kd_twolevel_ops = {
	.name = "twolevel",
	.has_bitmap = true,
	.check_config = kd_emu_check_config,
	KD_EMU_COMMON_OPS,
	.log_alloc = twolevel_log_alloc,
	.get_dirty_log = twolevel_get,
	.clear_dirty_log = twolevel_clear,
	.collect = twolevel_collect,
};
