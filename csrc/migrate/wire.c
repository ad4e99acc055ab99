/*
 * wire.c - the migration wire format: batch sealing, CRC32C, page hashes, and
 * the decoder that rebuilds destination memory from a stream.
 *
 * Stream = a sequence of batches. All integers big-endian.
 *
 *   batch header (KD_WIRE_BATCH_HEADER = 24 bytes)
 *     0  be32 magic        KD_WIRE_BATCH_MAGIC ("KDB1")
 *     4  be32 payload_len  bytes of records after the header, <= KD_WIRE_MAX_PAYLOAD
 *     8  be64 seq          0, 1, 2, ... per stream (a lost or repeated batch is an error)
 *    16  be32 nrecords     records in the payload
 *    20  be32 crc          CRC32C (Castagnoli) of header bytes 0..19, then the payload
 *
 *   records: be64 header = address | flag (address page aligned, flag in the
 *   low 12 bits, exactly one flag per record, as QEMU's RAM_SAVE_FLAG_*):
 *     KD_WIRE_MEM_SIZE 0x04  address field = total guest bytes; then be32
 *                            nregions, then nregions x (be64 gpa, be64 size).
 *                            Must be the first record of the stream.
 *     KD_WIRE_ZERO     0x02  the page at address is filled with the next byte
 *                            (1 byte follows: 9 bytes in all).
 *     KD_WIRE_PAGE     0x08  the page's 4096 bytes follow (4104 bytes in all).
 *     KD_WIRE_EOS      0x10  end of stream: the last record of the last batch.
 *
 * The decoder checks magic, length, sequence and CRC of a whole batch before
 * applying any of its records, so a corrupted batch changes nothing; records
 * outside the announced regions, unknown flags, data after EOS, or a stream
 * that ends without EOS are errors, never a silent mismatch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>

#include "kvmdirty.h"

#define PAGE KD_PAGE_SIZE

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

/* ---- CRC32C: SSE4.2 instruction where the CPU has it, else a table ---- */

static uint32_t crc_table[8][256];
static int crc_hw = -1;
static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n);
static void crc_tables_init(void);

static void crc_init(void);
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
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
	crc_hw = 0;
#endif
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
uint32_t kd__crc32c_copy(uint32_t crc, void *dst, const void *src, uint64_t n);
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
#if defined(__x86_64__)
	crc_hw = on ? 0 : (__builtin_cpu_supports("sse4.2") ? 1 : 0);
#else
	crc_hw = 0;
#endif
	return 0;
}

/* ---- page hashes for verification (64-bit, four-lane multiply-rotate) ---- */

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

/* ---- sealing a batch ---- */

static void put_batch_header(uint8_t *b, uint64_t payload_len, uint32_t nrecords, uint64_t seq)
{
	put_be32(b, KD_WIRE_BATCH_MAGIC);
	put_be32(b + 4, (uint32_t)payload_len);
	put_be64(b + 8, seq);
	put_be32(b + 16, nrecords);
}

KD_API int kd_wire_seal_batch(void *buf, uint64_t payload_len, uint32_t nrecords, uint64_t seq)
{
	uint8_t *b = buf;
	uint32_t crc;

	if (!buf || payload_len > KD_WIRE_MAX_PAYLOAD)
		return -EINVAL;
	put_batch_header(b, payload_len, nrecords, seq);
	crc = kd_crc32c(0, b, 20);
	crc = kd_crc32c(crc, b + KD_WIRE_BATCH_HEADER, payload_len);
	put_be32(b + 20, crc);
	return 0;
}

KD_API int kd_wire_seal_batch_crc(void *buf, uint64_t payload_len, uint32_t nrecords,
				  uint64_t seq, uint32_t payload_crc)
{
	uint8_t *b = buf;

	if (!buf || payload_len > KD_WIRE_MAX_PAYLOAD)
		return -EINVAL;
	put_batch_header(b, payload_len, nrecords, seq);
	put_be32(b + 20, kd_crc32c_combine(kd_crc32c(0, b, 20), payload_crc, payload_len));
	return 0;
}

KD_API int64_t kd_wire_put_mem_size(void *buf, uint64_t cap, const uint64_t *gpas,
				     const uint64_t *sizes, uint32_t nregions)
{
	uint8_t *b = buf;
	uint64_t need = 12 + 16ull * nregions, total = 0;

	if (!buf || (!gpas || !sizes) || nregions == 0 || nregions > KD_WIRE_MAX_REGIONS)
		return -EINVAL;
	if (cap < need)
		return -ENOSPC;
	for (uint32_t i = 0; i < nregions; i++) {
		if ((gpas[i] | sizes[i]) & (PAGE - 1) || sizes[i] == 0)
			return -EINVAL;
		total += sizes[i];
	}
	put_be64(b, total | KD_WIRE_MEM_SIZE);
	put_be32(b + 8, nregions);
	for (uint32_t i = 0; i < nregions; i++) {
		put_be64(b + 12 + 16 * i, gpas[i]);
		put_be64(b + 20 + 16 * i, sizes[i]);
	}
	return (int64_t)need;
}

KD_API int64_t kd_wire_put_eos(void *buf, uint64_t cap)
{
	if (!buf)
		return -EINVAL;
	if (cap < 8)
		return -ENOSPC;
	put_be64(buf, KD_WIRE_EOS);
	return 8;
}

/* ---- the destination: decode and apply ---- */

struct dest_region {
	uint64_t gpa, size;
	uint8_t *mem;
	uint64_t *written; /* bit per page: written since mapped (else still zero) */
};

/*
 * Prefault thread. A fresh destination page costs a fault and the kernel's
 * zeroing of it on first write, in the thread that applies the stream. While
 * the stream writes densely in address order (the bulk pass), a helper thread
 * runs MADV_POPULATE_WRITE a little ahead of it (prefault_ahead bytes), on
 * another core, so the apply thread finds its pages mapped. Sparse writes
 * (later passes) and zero pages move nothing, so a mostly-zero guest still
 * costs little memory: at most prefault_ahead bytes past each dense run.
 * Off by default: with 2 MiB pages the zeroing is cheap and the helper's extra
 * CPU is only worth it where a core is idle (measured on a 2-core EPYC guest:
 * feeding thread 0.43 -> 0.35 s/GiB, process 0.43 -> 0.49 s/GiB).
 */
#define PREFAULT_STEP (2ull << 20)
#define NO_HINT UINT64_MAX

struct kd_wire_dest {
	struct dest_region *r;
	uint64_t *prefix; /* linear offset of each region (address order) */
	uint64_t total;
	uint32_t nregions;
	uint32_t last;
	int failed;   /* sticky negative errno */
	int eos;
	struct kd_wire_dest_stats st;
	char error[160];
	/* prefault thread */
	uint64_t pf_ahead;
	pthread_t pf_thread;
	int pf_running;
	pthread_mutex_t pf_lock;
	pthread_cond_t pf_cond;
	uint64_t pf_hint;  /* linear end of the last dense batch, or NO_HINT */
	int pf_stop;
	uint64_t pf_bytes; /* bytes prefaulted (atomic) */
};

KD_API int kd_wire_dest_create(kd_wire_dest **out)
{
	kd_wire_dest *d;

	if (!out)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->pf_ahead = 0; /* off unless asked: see kd_wire_dest_set_prefault */
	d->pf_hint = NO_HINT;
	pthread_mutex_init(&d->pf_lock, NULL);
	pthread_cond_init(&d->pf_cond, NULL);
	*out = d;
	return 0;
}

KD_API int kd_wire_dest_set_prefault(kd_wire_dest *d, uint64_t ahead_bytes)
{
	if (!d || (ahead_bytes & (PAGE - 1)))
		return -EINVAL;
	if (d->pf_running || d->nregions)
		return -EBUSY; /* before the stream starts */
	d->pf_ahead = ahead_bytes;
	return 0;
}

static void *pf_main(void *arg)
{
	kd_wire_dest *d = arg;
	uint64_t done = 0;

	pthread_mutex_lock(&d->pf_lock);
	for (;;) {
		uint64_t hint, target;

		while (!d->pf_stop && (d->pf_hint == NO_HINT || d->pf_hint + d->pf_ahead <= done))
			pthread_cond_wait(&d->pf_cond, &d->pf_lock);
		if (d->pf_stop)
			break;
		hint = d->pf_hint;
		pthread_mutex_unlock(&d->pf_lock);
		if (done < hint)
			done = hint; /* never behind the writer */
		target = hint + d->pf_ahead < d->total ? hint + d->pf_ahead : d->total;
		while (done < target && !__atomic_load_n(&d->pf_stop, __ATOMIC_RELAXED)) {
			uint32_t i = 0;
			uint64_t len, off;
			while (i + 1 < d->nregions && d->prefix[i + 1] <= done)
				i++;
			off = done - d->prefix[i];
			len = PREFAULT_STEP - (off & (PREFAULT_STEP - 1));
			if (len > d->r[i].size - off)
				len = d->r[i].size - off;
			if (len > target - done)
				len = target - done;
#ifdef MADV_POPULATE_WRITE
			if (madvise(d->r[i].mem + off, len, MADV_POPULATE_WRITE))
#endif
			{
				/* not supported (or no memory): the writer faults itself */
				pthread_mutex_lock(&d->pf_lock);
				goto out;
			}
			__atomic_fetch_add(&d->pf_bytes, len, __ATOMIC_RELAXED);
			done += len;
		}
		pthread_mutex_lock(&d->pf_lock);
		if (done >= d->total)
			break;
	}
out:
	pthread_mutex_unlock(&d->pf_lock);
	return NULL;
}

static void pf_start(kd_wire_dest *d)
{
	if (!d->pf_ahead || d->pf_running)
		return;
	if (pthread_create(&d->pf_thread, NULL, pf_main, d) == 0)
		d->pf_running = 1;
}

static void pf_finish(kd_wire_dest *d)
{
	if (!d->pf_running)
		return;
	pthread_mutex_lock(&d->pf_lock);
	d->pf_stop = 1;
	pthread_cond_signal(&d->pf_cond);
	pthread_mutex_unlock(&d->pf_lock);
	pthread_join(d->pf_thread, NULL);
	d->pf_running = 0;
}

/* After a batch: if its page records were dense and ascending, tell the
 * prefault thread where the writer is. */
static void pf_hint(kd_wire_dest *d, uint64_t first, uint64_t end, uint64_t npages)
{
	if (!d->pf_running || npages < 16 || end <= first || end - first > 2 * npages * PAGE)
		return;
	pthread_mutex_lock(&d->pf_lock);
	d->pf_hint = end;
	pthread_cond_signal(&d->pf_cond);
	pthread_mutex_unlock(&d->pf_lock);
}

KD_API void kd_wire_dest_destroy(kd_wire_dest *d)
{
	if (!d)
		return;
	pf_finish(d);
	pthread_mutex_destroy(&d->pf_lock);
	pthread_cond_destroy(&d->pf_cond);
	free(d->prefix);
	for (uint32_t i = 0; i < d->nregions; i++)
		if (d->r[i].mem)
			munmap(d->r[i].mem, d->r[i].size);
	for (uint32_t i = 0; i < d->nregions; i++)
		free(d->r[i].written);
	free(d->r);
	free(d);
}

static int fail(kd_wire_dest *d, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail(kd_wire_dest *d, int err, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(d->error, sizeof(d->error), "batch %llu: ",
			 (unsigned long long)d->st.batches);
	va_start(ap, fmt);
	vsnprintf(d->error + n, sizeof(d->error) - (size_t)n, fmt, ap);
	va_end(ap);
	d->failed = err;
	return err;
}

static struct dest_region *find_region(kd_wire_dest *d, uint64_t gpa)
{
	struct dest_region *r = &d->r[d->last];
	uint32_t lo = 0, hi = d->nregions;

	if (d->nregions && gpa - r->gpa < r->size)
		return r;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (gpa < d->r[mid].gpa)
			hi = mid;
		else if (gpa - d->r[mid].gpa >= d->r[mid].size)
			lo = mid + 1;
		else {
			d->last = mid;
			return &d->r[mid];
		}
	}
	return NULL;
}

static int cmp_region(const void *a, const void *b)
{
	const struct dest_region *x = a, *y = b;
	return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

static int apply_mem_size(kd_wire_dest *d, const uint8_t *p, uint64_t left, uint64_t total,
			  uint64_t *used)
{
	uint32_t n;
	uint64_t sum = 0;

	if (d->nregions)
		return fail(d, -EPROTO, "a second MEM_SIZE record");
	if (left < 4)
		return fail(d, -EPROTO, "MEM_SIZE record cut short");
	n = get_be32(p);
	if (n == 0 || n > KD_WIRE_MAX_REGIONS || left < 4 + 16ull * n)
		return fail(d, -EPROTO, "MEM_SIZE record with a bad region count %u", n);
	d->r = calloc(n, sizeof(*d->r));
	if (!d->r)
		return fail(d, -ENOMEM, "out of memory for %u regions", n);
	for (uint32_t i = 0; i < n; i++) {
		d->r[i].gpa = get_be64(p + 4 + 16 * i);
		d->r[i].size = get_be64(p + 12 + 16 * i);
		if ((d->r[i].gpa | d->r[i].size) & (PAGE - 1) || !d->r[i].size ||
		    d->r[i].gpa + d->r[i].size < d->r[i].gpa) {
			free(d->r);
			d->r = NULL;
			return fail(d, -EPROTO, "MEM_SIZE region %u not page aligned", i);
		}
		sum += d->r[i].size;
	}
	qsort(d->r, n, sizeof(*d->r), cmp_region);
	for (uint32_t i = 1; i < n; i++)
		if (d->r[i - 1].gpa + d->r[i - 1].size > d->r[i].gpa) {
			free(d->r);
			d->r = NULL;
			return fail(d, -EPROTO, "MEM_SIZE regions overlap");
		}
	if (sum != total) {
		free(d->r);
		d->r = NULL;
		return fail(d, -EPROTO, "MEM_SIZE total %llu != sum of regions %llu",
			    (unsigned long long)total, (unsigned long long)sum);
	}
	for (uint32_t i = 0; i < n; i++) {
		void *m = mmap(NULL, d->r[i].size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED) {
			d->nregions = i;
			return fail(d, -ENOMEM, "cannot map %llu bytes of destination memory",
				    (unsigned long long)d->r[i].size);
		}
		/* 2 MiB pages where the kernel has them: one fault (and one zeroing)
		 * per 512 pages received instead of one per page; untouched
		 * ranges still cost nothing (MAP_NORESERVE) */
#ifdef MADV_HUGEPAGE
		madvise(m, d->r[i].size, MADV_HUGEPAGE);
#endif
		d->r[i].mem = m;
		d->r[i].written = calloc((d->r[i].size / PAGE + 63) / 64, 8);
		if (!d->r[i].written) {
			d->nregions = i + 1;
			return fail(d, -ENOMEM, "out of memory for the page map of %llu bytes",
				    (unsigned long long)d->r[i].size);
		}
	}
	d->nregions = n;
	d->st.regions = n;
	d->st.guest_bytes = total;
	d->prefix = malloc(n * sizeof(*d->prefix));
	if (!d->prefix)
		return fail(d, -ENOMEM, "out of memory for %u regions", n);
	{
		uint64_t at = 0;
		for (uint32_t i = 0; i < n; i++) {
			d->prefix[i] = at;
			at += d->r[i].size;
		}
	}
	d->total = total;
	pf_start(d);
	*used = 4 + 16ull * n;
	return 0;
}

/* Apply one verified batch payload. */
static int apply_payload(kd_wire_dest *d, const uint8_t *p, uint64_t len, uint32_t nrecords)
{
	uint64_t off = 0, pf_first = NO_HINT, pf_end = 0, pf_n = 0;
	uint32_t i;

	for (i = 0; i < nrecords; i++) {
		uint64_t hdr, addr, flag, used = 0, pg, bit;
		struct dest_region *r;

		if (d->eos)
			return fail(d, -EPROTO, "record after end of stream");
		if (len - off < 8)
			return fail(d, -EPROTO, "record %u cut short", i);
		hdr = get_be64(p + off);
		off += 8;
		addr = hdr & ~(uint64_t)(PAGE - 1);
		flag = hdr & (PAGE - 1);
		if (flag != KD_WIRE_MEM_SIZE && flag != KD_WIRE_EOS && !d->nregions)
			return fail(d, -EPROTO, "page record before the MEM_SIZE record");
		switch (flag) {
		case KD_WIRE_MEM_SIZE: {
			int r2 = apply_mem_size(d, p + off, len - off, addr, &used);
			if (r2)
				return r2;
			off += used;
			break;
		}
		case KD_WIRE_ZERO:
		case KD_WIRE_PAGE:
			r = find_region(d, addr);
			if (!r)
				return fail(d, -ERANGE, "page at %#llx is outside every region",
					    (unsigned long long)addr);
			pg = (addr - r->gpa) / PAGE;
			bit = 1ull << (pg & 63);
			if (flag == KD_WIRE_ZERO) {
				uint8_t fill;
				if (len - off < 1)
					return fail(d, -EPROTO, "zero record cut short");
				fill = p[off++];
				/* a page never written is still zero: neither read nor
				 * populate it (a read would fault in the zero page) */
				if (fill || (r->written[pg >> 6] & bit)) {
					memset(r->mem + pg * PAGE, fill, PAGE);
					r->written[pg >> 6] |= bit;
				}
				d->st.zero_pages++;
			} else {
				if (len - off < PAGE)
					return fail(d, -EPROTO, "page record cut short");
				memcpy(r->mem + pg * PAGE, p + off, PAGE);
				r->written[pg >> 6] |= bit;
				{
					uint64_t lin = d->prefix[r - d->r] + pg * PAGE;
					if (pf_first == NO_HINT)
						pf_first = lin;
					pf_end = lin + PAGE;
					pf_n++;
				}
				off += PAGE;
				d->st.pages++;
			}
			break;
		case KD_WIRE_EOS:
			if (addr)
				return fail(d, -EPROTO, "EOS record with an address");
			d->eos = 1;
			break;
		default:
			return fail(d, -EPROTO, "record %u has unknown flags %#llx", i,
				    (unsigned long long)flag);
		}
		d->st.records++;
	}
	if (off != len)
		return fail(d, -EPROTO, "%llu bytes after the last record",
			    (unsigned long long)(len - off));
	if (d->eos)
		pf_finish(d);
	else if (pf_n)
		pf_hint(d, pf_first, pf_end, pf_n);
	return 0;
}

KD_API int kd_wire_dest_feed(kd_wire_dest *d, const void *buf, uint64_t len, uint64_t *consumed)
{
	const uint8_t *b = buf;
	uint64_t off = 0;
	int r = 0;

	if (!d || !consumed || (!buf && len))
		return -EINVAL;
	*consumed = 0;
	if (d->failed)
		return d->failed;
	while (!d->eos && len - off >= KD_WIRE_BATCH_HEADER) {
		const uint8_t *h = b + off;
		uint32_t plen = get_be32(h + 4), crc;
		uint64_t seq = get_be64(h + 8);

		if (get_be32(h) != KD_WIRE_BATCH_MAGIC)
			return fail(d, -EBADMSG, "bad magic %#x (not a batch header)",
				    get_be32(h));
		if (plen > KD_WIRE_MAX_PAYLOAD)
			return fail(d, -EBADMSG, "payload length %u exceeds %u", plen,
				    KD_WIRE_MAX_PAYLOAD);
		if (seq != d->st.batches)
			return fail(d, -EBADMSG, "sequence number %llu, expected %llu",
				    (unsigned long long)seq, (unsigned long long)d->st.batches);
		if (len - off - KD_WIRE_BATCH_HEADER < plen)
			break; /* incomplete: wait for more */
		crc = kd_crc32c(0, h, 20);
		crc = kd_crc32c(crc, h + KD_WIRE_BATCH_HEADER, plen);
		if (crc != get_be32(h + 20))
			return fail(d, -EBADMSG, "checksum mismatch (crc32c %#x, header says %#x)",
				    crc, get_be32(h + 20));
		r = apply_payload(d, h + KD_WIRE_BATCH_HEADER, plen, get_be32(h + 16));
		if (r)
			return r;
		off += KD_WIRE_BATCH_HEADER + plen;
		d->st.batches++;
		d->st.bytes += KD_WIRE_BATCH_HEADER + plen;
		*consumed = off;
	}
	if (d->eos && off < len)
		return fail(d, -EPROTO, "%llu bytes after end of stream",
			    (unsigned long long)(len - off));
	return d->eos ? 1 : 0;
}

KD_API int64_t kd_wire_dest_need(kd_wire_dest *d, const void *buf, uint64_t len)
{
	const uint8_t *b = buf;

	if (!d || (!buf && len))
		return -EINVAL;
	if (len < KD_WIRE_BATCH_HEADER)
		return KD_WIRE_BATCH_HEADER;
	if (get_be32(b + 4) > KD_WIRE_MAX_PAYLOAD)
		return KD_WIRE_BATCH_HEADER; /* feed reports the error */
	return KD_WIRE_BATCH_HEADER + (int64_t)get_be32(b + 4);
}

KD_API int kd_wire_dest_finish(kd_wire_dest *d, uint64_t leftover)
{
	if (!d)
		return -EINVAL;
	if (d->failed)
		return d->failed;
	if (!d->eos) {
		if (leftover)
			return fail(d, -EPIPE, "stream truncated: %llu bytes of an incomplete batch "
				    "and no end-of-stream record", (unsigned long long)leftover);
		return fail(d, -EPIPE, "stream truncated: no end-of-stream record");
	}
	return 0;
}

KD_API const char *kd_wire_dest_error(const kd_wire_dest *d)
{
	return d && d->failed ? d->error : NULL;
}

KD_API int kd_wire_dest_stats(const kd_wire_dest *d, struct kd_wire_dest_stats *out)
{
	if (!d || !out)
		return -EINVAL;
	*out = d->st;
	out->eos = (uint64_t)d->eos;
	out->prefaulted = __atomic_load_n(&d->pf_bytes, __ATOMIC_RELAXED);
	return 0;
}

KD_API int kd_wire_dest_region(const kd_wire_dest *d, uint32_t index, uint64_t *gpa,
			       uint64_t *size, void **memory)
{
	if (!d || !gpa || !size || !memory)
		return -EINVAL;
	if (index >= d->nregions)
		return -ENOENT;
	*gpa = d->r[index].gpa;
	*size = d->r[index].size;
	*memory = d->r[index].mem;
	return 0;
}
