/*
 * core/cpu_features.c - CPU feature detection (core/cpu_features.h).
 *
 * Detection is idempotent, so threads racing on the first call compute and
 * store the same value; the cache is read and written with relaxed atomics,
 * and KD_CPU_DETECTED says it is filled (a CPU with no feature caches just
 * that bit).
 */
#include "core/cpu_features.h"

unsigned kd_cpu_feature_cache;

unsigned kd_cpu_detect(void)
{
	unsigned f = KD_CPU_DETECTED;

#if defined(__x86_64__) || defined(__i386__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		f |= KD_CPU_AVX2;
	if (__builtin_cpu_supports("sse4.2"))
		f |= KD_CPU_SSE42;
#endif
	__atomic_store_n(&kd_cpu_feature_cache, f, __ATOMIC_RELAXED);
	return f;
}

/* detected before any thread of the program can ask (the lazy path of
 * kd_cpu_features stays for static links that call in from a constructor) */
__attribute__((constructor)) static void detect_at_load(void)
{
	kd_cpu_detect();
}
