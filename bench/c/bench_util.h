/*
 * bench_util.h - the small helpers the C benchmarks in bench/c/ share: a
 * repeatable xorshift generator, qsort comparators and a median.
 */
#ifndef KD_BENCH_UTIL_H
#define KD_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>

static uint64_t bench_rng = 88172645463325252ull;

/* xorshift64: the same sequence on every run */
static inline uint64_t next_random(void)
{
	bench_rng ^= bench_rng << 13;
	bench_rng ^= bench_rng >> 7;
	bench_rng ^= bench_rng << 17;
	return bench_rng;
}

static inline int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The median of v[0..n) (sorts v). */
static inline double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return v[n / 2];
}

#endif
