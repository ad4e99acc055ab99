/*
 * migrate/zero.c - zero-page detection (AVX2 where the CPU has it, else
 * 64-bit words), the choice between vector and scalar helpers
 * (kd_simd_select), and a plain streaming read as the bandwidth reference.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/cpu_features.h"
#include "kvmdirty.h"
#include "simd.h"

#define PAGE KD_PAGE_SIZE


static int zero_scalar(const void *buf, uint64_t len)
{
	const uint8_t *p = buf;
	uint64_t i = 0;

	for (; i + 64 <= len; i += 64) {
		uint64_t w[8];
		memcpy(w, p + i, 64);
		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return 0;
	}
	for (; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static int zero_avx2(const void *buf, uint64_t len)
{
	const uint8_t *p = buf;
	uint64_t i = 0;

	/* the first 32 bytes alone: a written page usually fails here */
	if (len >= 32) {
		__m256i v = _mm256_loadu_si256((const __m256i *)p);
		if (!_mm256_testz_si256(v, v))
			return 0;
	}
	for (; i + 256 <= len; i += 256) {
		const __m256i *q = (const __m256i *)(p + i);
		__m256i a = _mm256_or_si256(_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1));
		__m256i b = _mm256_or_si256(_mm256_loadu_si256(q + 2), _mm256_loadu_si256(q + 3));
		__m256i c = _mm256_or_si256(_mm256_loadu_si256(q + 4), _mm256_loadu_si256(q + 5));
		__m256i d = _mm256_or_si256(_mm256_loadu_si256(q + 6), _mm256_loadu_si256(q + 7));
		a = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
		if (!_mm256_testz_si256(a, a))
			return 0;
	}
	return zero_scalar(p + i, len - i);
}
#endif

static int (*zero_impl)(const void *, uint64_t);
static int zero_level = -1;

static void zero_select(int level)
{
#if defined(__x86_64__)
	if (level != 0 && kd_cpu_has(KD_CPU_AVX2)) {
		zero_impl = zero_avx2;
		zero_level = 1;
		return;
	}
#endif
	(void)level;
	zero_impl = zero_scalar;
	zero_level = 0;
}

kd_zero_fn kd__zero_check(void)
{
	if (!zero_impl)
		zero_select(1);
	return zero_impl;
}

KD_API int kd_buffer_is_zero(const void *buf, uint64_t len)
{
	if (!zero_impl)
		zero_select(1);
	if (!buf)
		return len ? -EINVAL : 1;
	return zero_impl(buf, len);
}

KD_API int kd_simd_select(int level)
{
	if (level < -1 || level > 1)
		return -EINVAL;
	if (level >= 0) {
		zero_select(level);
		kd_crc32c_force_software(level == 0);
	} else if (!zero_impl) {
		zero_select(1);
	}
	return zero_level;
}

KD_API int64_t kd_count_zero_pages(const void *memory, uint64_t npages)
{
	const uint8_t *m = memory;
	int64_t n = 0;

	if (!memory && npages)
		return -EINVAL;
	if (!zero_impl)
		zero_select(1);
	for (uint64_t i = 0; i < npages; i++)
		n += zero_impl(m + i * PAGE, PAGE);
	return n;
}

KD_API int64_t kd_read_bandwidth_probe(const void *memory, uint64_t len)
{
	/* sum of 64-bit words (what a plain streaming read costs); the result
	 * keeps the compiler from dropping the loop */
	const uint64_t *w = memory;
	uint64_t a = 0, b = 0, c = 0, d = 0;

	if (!memory && len)
		return -EINVAL;
	for (uint64_t i = 0; i + 4 <= len / 8; i += 4) {
		a += w[i];
		b += w[i + 1];
		c += w[i + 2];
		d += w[i + 3];
	}
	return (int64_t)((a ^ b ^ c ^ d) & 0x7fffffffffffffffull);
}
