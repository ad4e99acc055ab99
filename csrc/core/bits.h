/*
 * core/bits.h - word-at-a-time helpers over bitmaps in KVM's layout (bit i
 * of word w = page w * 64 + i), shared by every log and by the hier log
 * (emu/hier_log.c). A leaf: inline, no other header of the library.
 */
#ifndef KD_BITS_H
#define KD_BITS_H

#include <stdint.h>

/* Bits of `word` (pages word*64 .. word*64 + 63) inside [first, end); 0
 * when the two do not meet. */
static inline uint64_t kd_range_mask(uint64_t word, uint64_t first, uint64_t end)
{
	uint64_t lo = word * 64, m = ~0ull;

	if (first > lo)
		m = first - lo >= 64 ? 0 : m << (first - lo);
	if (end < lo + 64)
		m &= end <= lo ? 0 : ~0ull >> (64 - (end - lo));
	return m;
}

/* Append gfn0 + i for every set bit i of `bits` to out[n..]; returns the
 * new n. */
static inline uint64_t kd_emit_bits(uint64_t bits, uint64_t gfn0, uint64_t *out, uint64_t n)
{
	while (bits) {
		out[n++] = gfn0 + (uint64_t)__builtin_ctzll(bits);
		bits &= bits - 1;
	}
	return n;
}

#endif /* KD_BITS_H */
