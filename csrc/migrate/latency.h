/*
 * migrate/latency.h - the latency histogram's buckets, one definition for
 * every histogram of the migrate layer (sender sample-to-send latency, guest
 * exit waits, guest entry stalls): HDR-style, 16 sub-buckets per power of
 * two, so a bucket's width is at most 1/16 (6.25%) of its floor.
 * kd_latency_bucket_floor() (public) is the inverse.
 */
#ifndef KD_MIGRATE_LATENCY_H
#define KD_MIGRATE_LATENCY_H

#include <stdint.h>

/* Bucket of value v (ns): v itself below 16, then 16 per power of two. */
static inline uint32_t kd_latency_bucket(uint64_t v)
{
	int e;
	if (v < 16)
		return (uint32_t)v;
	e = 63 - __builtin_clzll(v);
	return (uint32_t)((e - 3) * 16 + ((v >> (e - 4)) & 15));
}

#endif /* KD_MIGRATE_LATENCY_H */
