/*
 * migrate/crc32c.c - CRC32C (Castagnoli), the wire format's checksum: the
 * SSE4.2 instruction where the CPU has it (three interleaved chains), else
 * slicing-by-8 tables; combining of CRCs; the copy-and-checksum the sender
 * uses for page records.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "core/cpu_features.h"
#include "kvmdirty.h"
#include "simd.h"


static uint32_t crc_table[8][256];
static int crc_hw = -1;
static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n);
static void crc_tables_init(void);

static void crc_init(void);

/* The instruction where the CPU has it, unless software is forced. */
static void crc_select(bool software)
{
#if defined(__x86_64__)
	crc_hw = !software && kd_cpu_has(KD_CPU_SSE42);
#else
	(void)software;
	crc_hw = 0;
#endif
}

/* tables ready before any thread can ask (the lazy checks stay for static links) */
__attribute__((constructor)) static void crc_init_at_load(void)
{
	crc_init();
}

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
					  crc_table[0][crc_table[t - 1][i] & 0xff];
	crc_tables_init();
	crc_select(false);
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n)
{
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		w ^= c;
		c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		    crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		    crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		    crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
		p += 8;
		n -= 8;
	}
	while (n--)
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
	return c;
}

/*
 * Combining CRCs (zlib's crc32_combine method): appending n zero bytes to a
 * message multiplies its raw CRC register by x^(8n) mod P, so
 * crc(A || B) = crc(A) * x^(8|B|) mod P  xor  crc(B).
 */
#define CRC_POLY 0x82f63b78u
static uint32_t x2n_table[32]; /* x^(2^k) mod P */

static uint32_t multmodp(uint32_t a, uint32_t b)
{
	uint32_t m = 1u << 31, p = 0;

	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
	}
	return p;
}

/* x^(n * 2^k) mod P */
static uint32_t x2nmodp(uint64_t n, unsigned k)
{
	uint32_t p = 1u << 31; /* x^0 */

	while (n) {
		if (n & 1)
			p = multmodp(x2n_table[k & 31], p);
		n >>= 1;
		k++;
	}
	return p;
}

/*
 * Three interleaved crc32 chains over three consecutive blocks of BLK bytes
 * (the crc32 instruction has a latency of three cycles, so one chain leaves
 * the unit idle), combined with a shift table for x^(8 BLK): 4 lookups.
 */
#define CRC_BLK 4096u
static uint32_t shift_blk[4][256];

static inline uint32_t crc_shift_blk(uint32_t c)
{
	return shift_blk[0][c & 0xff] ^ shift_blk[1][(c >> 8) & 0xff] ^
	       shift_blk[2][(c >> 16) & 0xff] ^ shift_blk[3][c >> 24];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t c, const uint8_t *p,
							    size_t n)
{
	uint64_t c64 = c;

	while (n >= 3 * CRC_BLK) {
		uint64_t c1 = 0, c2 = 0;
		for (size_t i = 0; i < CRC_BLK; i += 8) {
			uint64_t w0, w1, w2;
			memcpy(&w0, p + i, 8);
			memcpy(&w1, p + CRC_BLK + i, 8);
			memcpy(&w2, p + 2 * CRC_BLK + i, 8);
			c64 = __builtin_ia32_crc32di(c64, w0);
			c1 = __builtin_ia32_crc32di(c1, w1);
			c2 = __builtin_ia32_crc32di(c2, w2);
		}
		c64 = crc_shift_blk((uint32_t)c64) ^ (uint32_t)c1;
		c64 = crc_shift_blk((uint32_t)c64) ^ (uint32_t)c2;
		p += 3 * CRC_BLK;
		n -= 3 * CRC_BLK;
	}
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c64 = __builtin_ia32_crc32di(c64, w);
		p += 8;
		n -= 8;
	}
	c = (uint32_t)c64;
	while (n--)
		c = __builtin_ia32_crc32qi(c, *p++);
	return c;
}

/* Copy n bytes (a multiple of 8) from src to dst, folding them into the raw
 * CRC register c as they pass: the sender checksums a page while it copies
 * it into the batch, so the page is read once. */
__attribute__((target("sse4.2"))) static uint32_t crc_copy_sse42(uint32_t c, uint8_t *dst,
								 const uint8_t *src, size_t n)
{
	uint64_t c64 = c;

	for (size_t i = 0; i < n; i += 32) {
		uint64_t w[4];
		memcpy(w, src + i, 32);
		memcpy(dst + i, w, 32);
		c64 = __builtin_ia32_crc32di(c64, w[0]);
		c64 = __builtin_ia32_crc32di(c64, w[1]);
		c64 = __builtin_ia32_crc32di(c64, w[2]);
		c64 = __builtin_ia32_crc32di(c64, w[3]);
	}
	return (uint32_t)c64;
}
#endif

/* Raw-register CRC for the tables (no SSE4.2 needed): bitwise, init only. */
static void crc_tables_init(void)
{
	uint32_t p = 1u << 30; /* x^1 */
	uint32_t xblk;

	x2n_table[0] = p;
	for (int k = 1; k < 32; k++)
		x2n_table[k] = p = multmodp(p, p);
	xblk = x2nmodp(CRC_BLK, 3);
	for (int t = 0; t < 4; t++)
		for (uint32_t i = 0; i < 256; i++)
			shift_blk[t][i] = multmodp(xblk, i << (8 * t));
}

KD_API uint32_t kd_crc32c(uint32_t crc, const void *data, uint64_t len)
{
	uint32_t c = ~crc;

	if (crc_hw < 0)
		crc_init();
	if (!data)
		return crc;
#if defined(__x86_64__)
	if (crc_hw)
		return ~crc_sse42(c, data, len);
#endif
	return ~crc_sw(c, data, len);
}

KD_API uint32_t kd_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
{
	if (crc_hw < 0)
		crc_init();
	return multmodp(x2nmodp(len2, 3), crc1) ^ crc2;
}

/* Internal (sendpath.c): crc continued over n bytes (a multiple of 32)
 * copied from src to dst. */
uint32_t kd__crc32c_copy(uint32_t crc, void *dst, const void *src, uint64_t n)
{
	if (crc_hw < 0)
		crc_init();
#if defined(__x86_64__)
	if (crc_hw && !(n & 31))
		return ~crc_copy_sse42(~crc, dst, src, n);
#endif
	memcpy(dst, src, n);
	return kd_crc32c(crc, dst, n);
}

KD_API int kd_crc32c_force_software(int on)
{
	if (crc_hw < 0)
		crc_init();
	crc_select(on);
	return 0;
}
