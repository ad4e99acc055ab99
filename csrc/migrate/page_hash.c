/*
 * migrate/page_hash.c - 64-bit page hashes (four-lane multiply-rotate) by
 * which a run verifies the destination's memory against the source's.
 */
#include <errno.h>
#include <string.h>

#include "kvmdirty.h"

#define PAGE KD_PAGE_SIZE


#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull

static inline uint64_t rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t page_hash(const uint8_t *p)
{
	uint64_t a = P1 + P2, b = P2, c = 0, d = (uint64_t)0 - P1;
	for (size_t i = 0; i < PAGE; i += 32) {
		uint64_t w[4];
		memcpy(w, p + i, 32);
		a = rotl(a + w[0] * P2, 31) * P1;
		b = rotl(b + w[1] * P2, 31) * P1;
		c = rotl(c + w[2] * P2, 31) * P1;
		d = rotl(d + w[3] * P2, 31) * P1;
	}
	uint64_t h = rotl(a, 1) + rotl(b, 7) + rotl(c, 12) + rotl(d, 18);
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

static uint64_t zero_hash;

KD_API int kd_page_hashes(const void *memory, uint64_t npages, uint64_t *out)
{
	const uint8_t *m = memory;

	if ((!memory || !out) && npages)
		return -EINVAL;
	if (!zero_hash) {
		static const uint8_t z[PAGE];
		zero_hash = page_hash(z);
	}
	for (uint64_t i = 0; i < npages; i++) {
		const uint8_t *p = m + i * PAGE;
		/* zero pages (most of a fresh guest) are cheap to recognise */
		out[i] = kd_buffer_is_zero(p, PAGE) ? zero_hash : page_hash(p);
	}
	return 0;
}
