/*
 * core/pending.c - the user side's set of pages reported by the kernel but not
 * yet collected, per slot: what a ring harvest brought in for other slots,
 * what a whole-slot GET (kvm classic) or a PAGEMAP_SCAN returned beyond the
 * range being collected. A bitmap in KVM layout plus a summary bit per 64
 * words (4096 pages), so taking from a large, sparse set costs what is in
 * it, not the slot size. Only the collector touches it, under vm->lock.
 *
 * Invariant: a set bit in pending[w] implies summary bit w / 64 is set (a
 * set summary bit over empty words is allowed and cleared when seen).
 *
 * Ownership: pending.c allocates pending, its summary and (for the real
 * backends) scratch, and undoes only its own allocations when one fails; a
 * slot's logs are freed whole by kd_slot_log_free (core/slots.c), which
 * calls down into kd_pending_free, never the other way.
 */
#include "core/internal.h"

int kd_pending_alloc(struct kd_slot *s)
{
	s->npending_summary = (s->nwords + 4095) / 4096;
	s->pending = kd_bitmap_alloc(s->nwords, false, 0);
	s->pending_summary = kd_bitmap_alloc(s->npending_summary, false, 0);
	if (!s->pending || !s->pending_summary) {
		kd_pending_free(s);
		return -ENOMEM;
	}
	return 0;
}

int kd_pending_scratch_alloc(struct kd_slot *s)
{
	int r = kd_pending_alloc(s);

	if (r)
		return r;
	s->scratch = kd_bitmap_alloc(s->nwords, false, 0);
	if (!s->scratch) {
		kd_pending_free(s); /* what this call allocated, and only that */
		return -ENOMEM;
	}
	return 0;
}

void kd_pending_free(struct kd_slot *s)
{
	kd_bitmap_free(s->pending, s->nwords);
	kd_bitmap_free(s->pending_summary, s->npending_summary);
	s->pending = s->pending_summary = NULL;
	s->npending_summary = 0;
}

void kd_pending_or(struct kd_slot *s, uint64_t w, uint64_t bits)
{
	if (!bits)
		return;
	s->pending[w] |= bits;
	s->pending_summary[w / 4096] |= 1ull << (w / 64 % 64);
}

/* OR a KVM-layout bitmap of the whole slot into pending, skipping zeros. */
void kd_pending_or_bitmap(struct kd_slot *s, const uint64_t *bm)
{
	for (uint64_t w = 0; (w = kd_find_nonzero_word(bm, w, s->nwords)) < s->nwords; w++)
		kd_pending_or(s, w, bm[w]);
}

uint64_t kd_pending_take(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			 uint64_t *gfns, uint64_t cap, uint64_t *resume)
{
	const uint64_t wfirst = first / 64, wend = (end + 63) / 64;
	const uint64_t b0 = wfirst / 64, b1 = (wend + 63) / 64; /* 64-word blocks */
	const bool bounded = cap < end - first;
	uint64_t n = 0, scanned = 0;

	*resume = end;
	if (first == end)
		return 0;
	for (uint64_t sw = b0 / 64; (sw = kd_find_nonzero_word(s->pending_summary, sw,
							       (b1 + 63) / 64)) < (b1 + 63) / 64;
	     sw++) {
		uint64_t blocks = s->pending_summary[sw] & kd_range_mask(sw, b0, b1);
		while (blocks) {
			uint64_t b = sw * 64 + (uint64_t)__builtin_ctzll(blocks);
			uint64_t w0 = b * 64 > wfirst ? b * 64 : wfirst;
			uint64_t w1 = b * 64 + 64 < wend ? b * 64 + 64 : wend, left = 0;
			blocks &= blocks - 1;
			for (uint64_t w = w0; w < w1; w++) {
				uint64_t bits = s->pending[w] & kd_range_mask(w, first, end);
				scanned++;
				if (!bits)
					continue;
				if (bounded && cap - n < 64) {
					*resume = w * 64 > first ? w * 64 : first;
					goto done; /* summary bits stay set: words remain */
				}
				s->pending[w] &= ~bits;
				n = kd_emit_bits(bits, s->base_gfn + w * 64, gfns, n);
			}
			/* the block may hold bits outside the range: keep its bit then */
			for (uint64_t w = b * 64; w < b * 64 + 64 && w < s->nwords; w++)
				left |= s->pending[w];
			if (!left)
				s->pending_summary[sw] &= ~(1ull << (b % 64));
		}
	}
done:
	vm->user.words_scanned += scanned;
	return n;
}
