/*
 * kvmdirty/page_draw.h - the seeded page draws of the uniform and hotspot
 * workloads, written once.
 *
 * Two programs include it: the emulator's generators (csrc/migrate/workload.c)
 * and the firmware guest that real QEMU migrates (pykvmdirty/qemu/guest/guest.c).
 * With the same seed, page count, hot-set size and share, both draw the same
 * pages in the same order, so a prediction of a QEMU cell runs the very
 * workload the guest runs.
 *
 * The generator is xoshiro256** seeded through splitmix64; a page below n is
 * Lemire's multiply-shift with rejection (unbiased); a hotspot draw takes the
 * hot set [hot_first, hot_first + hot_n) when the top 53 bits of a draw fall
 * below hot_threshold (hot_share x 2^53), else a page of the rest. The hot
 * set's first page is the first draw after seeding. Integer arithmetic only
 * and no libc: the guest runs freestanding at CPL3 without SSE state.
 */
#ifndef KVMDIRTY_PAGE_DRAW_H
#define KVMDIRTY_PAGE_DRAW_H

#include <stdint.h>

struct kd_draw {
	uint64_t s[4];          /* xoshiro256** state */
	uint64_t npages;        /* pages of the range */
	uint64_t hot_first;     /* hotspot: first hot page (of the range) */
	uint64_t hot_n;         /* hotspot: hot pages; 0: uniform */
	uint64_t hot_threshold; /* hotspot: hot_share x 2^53 */
};

static inline uint64_t kd_draw_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t kd_draw_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static inline uint64_t kd_draw_next64(struct kd_draw *d)
{
	uint64_t r = kd_draw_rotl(d->s[1] * 5, 7) * 9, t = d->s[1] << 17;
	d->s[2] ^= d->s[0];
	d->s[3] ^= d->s[1];
	d->s[1] ^= d->s[2];
	d->s[0] ^= d->s[3];
	d->s[2] ^= t;
	d->s[3] = kd_draw_rotl(d->s[3], 45);
	return r;
}

/* uniform in [0, n), n > 0 */
static inline uint64_t kd_draw_below(struct kd_draw *d, uint64_t n)
{
	unsigned __int128 m = (unsigned __int128)kd_draw_next64(d) * n;
	uint64_t lo = (uint64_t)m;
	if (lo < n) {
		uint64_t t = (0 - n) % n;
		while (lo < t) {
			m = (unsigned __int128)kd_draw_next64(d) * n;
			lo = (uint64_t)m;
		}
	}
	return (uint64_t)(m >> 64);
}

/* A uniform draw over npages pages (> 0). */
static inline void kd_draw_init(struct kd_draw *d, uint64_t seed, uint64_t npages)
{
	for (int i = 0; i < 4; i++)
		d->s[i] = kd_draw_splitmix64(&seed);
	d->npages = npages;
	d->hot_first = d->hot_n = d->hot_threshold = 0;
}

/* Make it a hotspot draw: hot_n pages (1..npages) get hot_threshold / 2^53
 * of the draws; the hot set's place is drawn here. */
static inline void kd_draw_hot(struct kd_draw *d, uint64_t hot_n, uint64_t hot_threshold)
{
	d->hot_n = hot_n;
	d->hot_threshold = hot_threshold;
	d->hot_first = kd_draw_below(d, d->npages - hot_n + 1);
}

/* The next page (0 .. npages-1). */
static inline uint64_t kd_draw_page(struct kd_draw *d)
{
	uint64_t p;

	if (!d->hot_n)
		return kd_draw_below(d, d->npages);
	if ((kd_draw_next64(d) >> 11) < d->hot_threshold || d->hot_n == d->npages)
		return d->hot_first + kd_draw_below(d, d->hot_n);
	p = kd_draw_below(d, d->npages - d->hot_n);
	return p >= d->hot_first ? p + d->hot_n : p;
}

#endif
