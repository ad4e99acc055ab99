/*
 * core/cpu_features.h - the one place the library asks the CPU what it has:
 * the vector paths (core/bitmap.c's scans, migrate/zero.c's zero check,
 * migrate/crc32c.c's CRC32C) test a feature bit here and fall back to
 * portable code when it is clear. A leaf: no other header of the library.
 *
 * What a caller does with a feature (kd_simd_select, kd_crc32c_force_software
 * turning a vector path off) is its own policy; this header only reports.
 */
#ifndef KD_CPU_FEATURES_H
#define KD_CPU_FEATURES_H

#include <stdbool.h>

enum kd_cpu_feature {
	KD_CPU_AVX2 = 1u << 0,  /* x86-64: 256-bit integer vectors */
	KD_CPU_SSE42 = 1u << 1, /* x86-64: the crc32 instruction */
};

#define KD_CPU_DETECTED (1u << 31) /* the cache below is filled */

/* core/cpu_features.c: the bits, filled at load (or by the first
 * kd_cpu_detect); relaxed atomics. */
extern unsigned kd_cpu_feature_cache;
unsigned kd_cpu_detect(void);

/* The features of this CPU (enum kd_cpu_feature bits), detected once; 0 off
 * x86. Safe from any thread; one load once detected (the scans ask per
 * call). */
static inline unsigned kd_cpu_features(void)
{
	unsigned f = __atomic_load_n(&kd_cpu_feature_cache, __ATOMIC_RELAXED);

	if (__builtin_expect(!f, 0))
		f = kd_cpu_detect();
	return f & ~KD_CPU_DETECTED;
}

static inline bool kd_cpu_has(unsigned feature)
{
	return (kd_cpu_features() & feature) == feature;
}

#endif /* KD_CPU_FEATURES_H */
