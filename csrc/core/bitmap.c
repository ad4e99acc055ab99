/*
 * core/bitmap.c - memory for logs, and the scanning primitives every backend
 * shares: find the next non-zero word (AVX2 when the CPU has it,
 * core/cpu_features.h) and turn a bitmap into a list of gfns.
 *
 * Logs are allocated populated (madvise MADV_POPULATE_WRITE, else a write to
 * every page): a kernel dirty bitmap is real zeroed memory, and scanning
 * untouched anonymous memory would read the shared zero page from L1 and
 * flatter every scan.
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "core/cpu_features.h"
#include "core/internal.h"
#include "core/mapping.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KD_HAVE_AVX2_PATH 1
#endif

/*
 * Logs of 2 MiB and more are 2 MiB-aligned with MADV_HUGEPAGE (kd_map_reserve):
 * a scattered scan touches one 4 KiB page per dirty chunk, and with 4 KiB pages every one
 * of them is a TLB miss (dearer still under nested paging). The kernel backs
 * vmalloc'd dirty bitmaps with whatever it has; here we take the favourable
 * case for every backend alike.
 */
void *kd_pages_alloc(uint64_t bytes, bool populate)
{
	char *p;

	if (!bytes)
		return NULL;
	if (!populate) {
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		return p == MAP_FAILED ? NULL : p;
	}
	p = kd_map_reserve(bytes);
	if (!p)
		return NULL;
#ifdef MADV_POPULATE_WRITE
	if (!madvise(p, bytes, MADV_POPULATE_WRITE))
		return p;
#endif
	for (uint64_t off = 0; off < bytes; off += KD_PAGE_SIZE) /* populate: real pages */
		((volatile char *)p)[off] = 0;
	return p;
}

void kd_pages_free(void *p, uint64_t bytes)
{
	if (p && bytes)
		munmap(p, bytes);
}

uint64_t *kd_bitmap_alloc(uint64_t nwords, bool ones, uint64_t nbits)
{
	uint64_t *bm = kd_pages_alloc(nwords * 8, true);

	if (!bm)
		return NULL;
	if (ones) {
		memset(bm, 0xff, nwords * 8);
		if (nbits & 63) /* bits past the end stay clear */
			bm[nwords - 1] = ~0ull >> (64 - (nbits & 63));
	}
	return bm;
}

void kd_bitmap_free(uint64_t *bm, uint64_t nwords)
{
	kd_pages_free(bm, nwords * 8);
}

static uint64_t find_nonzero_scalar(const uint64_t *w, uint64_t i, uint64_t to)
{
	for (; i < to && (i & 7); i++)
		if (w[i])
			return i;
	for (; i + 8 <= to; i += 8)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		    w[i + 7])
			break;
	for (; i < to; i++)
		if (w[i])
			return i;
	return to;
}

#ifdef KD_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static uint64_t find_nonzero_avx2(const uint64_t *w, uint64_t i,
								  uint64_t to)
{
	for (; i < to && (i & 3); i++)
		if (w[i])
			return i;
	/* 64 bytes (one cache line, 8 words) per step, two lines unrolled */
	for (; i + 16 <= to; i += 16) {
		__m256i a = _mm256_loadu_si256((const __m256i *)(w + i));
		__m256i b = _mm256_loadu_si256((const __m256i *)(w + i + 4));
		__m256i c = _mm256_loadu_si256((const __m256i *)(w + i + 8));
		__m256i d = _mm256_loadu_si256((const __m256i *)(w + i + 12));
		__m256i o = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
		if (!_mm256_testz_si256(o, o))
			break;
	}
	return find_nonzero_scalar(w, i, to);
}

__attribute__((target("avx2"))) static uint64_t find_byte_avx2(const uint8_t *b, uint64_t i,
							       uint64_t to, uint8_t bit)
{
	const __m256i m = _mm256_set1_epi8((char)bit);
	for (; i < to && (i & 31); i++)
		if (b[i] & bit)
			return i;
	for (; i + 64 <= to; i += 64) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(b + i));
		__m256i y = _mm256_loadu_si256((const __m256i *)(b + i + 32));
		__m256i o = _mm256_and_si256(_mm256_or_si256(x, y), m);
		if (!_mm256_testz_si256(o, o))
			break;
	}
	for (; i < to; i++)
		if (b[i] & bit)
			return i;
	return to;
}
#endif

uint64_t kd_find_nonzero_word(const uint64_t *w, uint64_t from, uint64_t to)
{
#ifdef KD_HAVE_AVX2_PATH
	if (kd_cpu_has(KD_CPU_AVX2))
		return find_nonzero_avx2(w, from, to);
#endif
	return find_nonzero_scalar(w, from, to);
}

uint64_t kd_find_byte_with(const uint8_t *b, uint64_t from, uint64_t to, uint8_t bit)
{
#ifdef KD_HAVE_AVX2_PATH
	if (kd_cpu_has(KD_CPU_AVX2))
		return find_byte_avx2(b, from, to, bit);
#endif
	for (; from < to; from++)
		if (b[from] & bit)
			return from;
	return to;
}

KD_API int64_t kd_bitmap_to_gfns(const uint64_t *bitmap, uint64_t nbits, uint64_t base,
				 uint64_t *out, uint64_t cap)
{
	uint64_t nwords = (nbits + 63) / 64, n = 0, i = 0;

	if ((!bitmap && nbits) || (!out && cap))
		return -EINVAL;
	while ((i = kd_find_nonzero_word(bitmap, i, nwords)) < nwords) {
		uint64_t bits = bitmap[i] & kd_range_mask(i, 0, nbits);
		uint64_t c = (uint64_t)__builtin_popcountll(bits);
		if (n + c <= cap) {
			kd_emit_bits(bits, base + i * 64, out, n);
		} else {
			for (uint64_t k = n; bits && k < cap; k++, bits &= bits - 1)
				out[k] = base + i * 64 + (uint64_t)__builtin_ctzll(bits);
		}
		n += c;
		i++;
	}
	return (int64_t)n;
}
