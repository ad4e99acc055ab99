/*
 * hier_floor.c - how low can a chunk-granular collect go? An idealised
 * version of the hier log's tree (64-ary summaries over 2 MiB chunks, a
 * 4-byte block index per group of chunks, leaves in pooled blocks), with
 * none of the library's bookkeeping: one thread, no writer sections, no
 * block retirement, no counters, no range or bound checks. The walk is
 * phased as the library's is (summaries level by level, then every dirty
 * chunk's index entry, then its leaf line), with one atomic take per
 * level-0 word and per non-zero leaf word, as the no-lost-write protocol
 * needs.
 *
 * It prints, for 1,000 scattered dirty pages, the median collect at 1 GiB,
 * 4 GiB, 512 GiB and 24 TiB (four 6 TiB slots) and the 24 TiB / 1 GiB
 * ratio: the floor under issue 15's "24 TiB within 1.5x of 1 GiB". At 1 GiB
 * the 1,000 pages share ~445 chunks and 8 summary words; at 24 TiB each has
 * its own summary word, index entry and leaf line, and this machine pays
 * ~10 ns for each even here.
 *
 *   cc -O2 -std=gnu11 bench/c/hier_floor.c -o /tmp/hier_floor && /tmp/hier_floor
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "bench_util.h"

#define CHUNK_PAGES 512u
#define GROUP_CHUNKS 8u
#define GROUP_PAGES (CHUNK_PAGES * GROUP_CHUNKS)
#define BLOCK_WORDS (GROUP_PAGES / 64u)
#define DIRTY 1000
#define ROUNDS 41
#define MAX_FRONTIER (1u << 16)

struct log {
	uint64_t npages;
	uint64_t *level[6];
	unsigned nlevels;
	uint32_t *index; /* block + 1 per group */
	uint64_t *pool;
	uint32_t top;
};

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *lazy(uint64_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void log_init(struct log *l, uint64_t npages)
{
	uint64_t n = (npages + CHUNK_PAGES - 1) / CHUNK_PAGES;

	memset(l, 0, sizeof(*l));
	l->npages = npages;
	do {
		uint64_t words = (n + 63) / 64;
		l->level[l->nlevels++] = lazy(words * 8);
		n = words;
	} while (n > 1);
	l->index = lazy((npages / GROUP_PAGES + 1) * 4);
	l->pool = lazy((npages / GROUP_PAGES + 1) * BLOCK_WORDS * 8);
}

static void log_write(struct log *l, uint64_t p)
{
	uint64_t g = p / GROUP_PAGES, bit = 1ull << (p & 63), node = p / CHUNK_PAGES;
	uint32_t b = l->index[g];

	if (!b)
		l->index[g] = b = ++l->top;
	if (__atomic_fetch_or(&l->pool[(b - 1) * BLOCK_WORDS + (p / 64) % BLOCK_WORDS], bit,
			      __ATOMIC_SEQ_CST) & bit)
		return;
	for (unsigned k = 0; k < l->nlevels; k++, node /= 64) {
		uint64_t *w = &l->level[k][node / 64], m = 1ull << (node % 64);
		if (__atomic_load_n(w, __ATOMIC_RELAXED) & m)
			return;
		__atomic_fetch_or(w, m, __ATOMIC_SEQ_CST);
	}
}

static uint64_t frontier[2][MAX_FRONTIER], chunks[MAX_FRONTIER];
static uint32_t blocks[MAX_FRONTIER];

/* Take every dirty page of the log into out; returns the count. Summary
 * words above level 0 are cleared outright (one thread: nothing races). */
static uint64_t log_collect(struct log *l, uint64_t base, uint64_t *out)
{
	uint64_t *cur = frontier[0], *nxt = frontier[1], n = 1, nchunks = 0, count = 0;

	cur[0] = 0;
	for (unsigned k = l->nlevels; k-- > 0;) {
		uint64_t m = 0;
		for (uint64_t i = 0; i < n; i++) {
			uint64_t wi = cur[i], bits;
			if (k == 0) {
				bits = __atomic_exchange_n(&l->level[0][wi], 0, __ATOMIC_SEQ_CST);
				for (; bits; bits &= bits - 1)
					chunks[nchunks++] = wi * 64 + (uint64_t)__builtin_ctzll(bits);
				continue;
			}
			bits = l->level[k][wi];
			l->level[k][wi] = 0;
			for (; bits; bits &= bits - 1)
				nxt[m++] = wi * 64 + (uint64_t)__builtin_ctzll(bits);
		}
		uint64_t *t = cur;
		cur = nxt;
		nxt = t;
		n = m;
	}
	for (uint64_t i = 0; i < nchunks; i++)
		blocks[i] = l->index[chunks[i] / GROUP_CHUNKS];
	for (uint64_t i = 0; i < nchunks; i++) {
		uint64_t ch = chunks[i];
		uint64_t *leaf = &l->pool[(blocks[i] - 1) * BLOCK_WORDS + (ch % GROUP_CHUNKS) * 8];
		unsigned nz = 0;
		for (unsigned j = 0; j < 8; j++)
			nz |= (unsigned)(leaf[j] != 0) << j;
		for (; nz; nz &= nz - 1) {
			unsigned j = (unsigned)__builtin_ctz(nz);
			uint64_t bits = __atomic_exchange_n(&leaf[j], 0, __ATOMIC_SEQ_CST);
			uint64_t gfn0 = base + ch * CHUNK_PAGES + j * 64;
			for (; bits; bits &= bits - 1)
				out[count++] = gfn0 + (uint64_t)__builtin_ctzll(bits);
		}
	}
	return count;
}

/* Median µs of a collect over nslots equal slots of total pages, DIRTY
 * random pages (the same ones) dirtied before each round. */
static double median_collect(uint64_t total, unsigned nslots)
{
	static struct log logs[4];
	static uint64_t out[DIRTY + 64];
	uint64_t per = total / nslots, pages[DIRTY];
	double t[ROUNDS];

	for (unsigned s = 0; s < nslots; s++)
		log_init(&logs[s], per);
	for (unsigned i = 0; i < DIRTY; i++)
		pages[i] = next_random() % total;
	for (int r = -2; r < ROUNDS; r++) {
		uint64_t t0, found = 0;
		for (unsigned i = 0; i < DIRTY; i++)
			log_write(&logs[pages[i] / per], pages[i] % per);
		t0 = now_ns();
		for (unsigned s = 0; s < nslots; s++)
			found += log_collect(&logs[s], s * per, out + found);
		if (r >= 0)
			t[r] = (double)(now_ns() - t0) / 1e3;
		if (found > DIRTY) {
			printf("collected %llu > %d\n", (unsigned long long)found, DIRTY);
			exit(1);
		}
	}
	return median(t, ROUNDS);
}

int main(void)
{
	const uint64_t gib = 1ull << 18;

	for (int rep = 0; rep < 3; rep++) {
		double g1 = median_collect(gib, 1), g4 = median_collect(4 * gib, 1);
		double g512 = median_collect(512 * gib, 1), t24 = median_collect(24576 * gib, 4);
		printf("1 GiB %.1f µs  4 GiB %.1f µs  512 GiB %.1f µs  24 TiB %.1f µs  "
		       "24 TiB / 1 GiB %.2fx\n", g1, g4, g512, t24, t24 / g1);
	}
	return 0;
}
