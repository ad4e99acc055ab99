/*
 * test_kvm_backend.c - standalone test and micro-benchmark of the real
 * /dev/kvm backend (csrc/real/kvm/). Timings are
 * printed, never asserted.
 *
 * Build and run from the repository root:
 *   cc -O2 -g -std=gnu11 -pthread -Wall -Wextra -Icsrc/include -Icsrc/real/kvm \
 *       tests/c/test_kvm_backend.c $(ls csrc/real/kvm/kvm_[a-z]*.c | grep -v _ops.c) \
 *       -o /tmp/test_kvm_backend && /tmp/test_kvm_backend [--no-bench]
 * (every file of the module but its ops table, which needs the VM core; as
 * tests/test_c_library.py builds it)
 *
 * Covers: classic GET on a 1 GiB + 3 page slot and a slot above 64 GiB with
 * the dirty_log_test invariants on guest memory; manual protect + CLEAR of
 * random aligned ranges; INITIALLY_SET; the dirty ring (full exit at the
 * soft limit, harvest in order, reset, resume); two vCPUs writing at once;
 * user slots taking the internal slot's id and address; a slot in the upper
 * half of a 48-bit guest-physical space; the errno table. Exit status 1 on
 * any failure, 77 (skip) if /dev/kvm is unusable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvm_backend.h"

#define GIB (1ull << 30)
#define LOG KD_MEM_LOG_DIRTY_PAGES

#include "check.h"


static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t *bm_alloc(uint64_t npages) { return calloc((npages + 63) / 64, 8); }
static void bm_set(uint64_t *b, uint64_t i) { b[i / 64] |= 1ull << (i % 64); }
static bool bm_test(const uint64_t *b, uint64_t i) { return b[i / 64] >> (i % 64) & 1; }
static uint64_t bm_count(const uint64_t *b, uint64_t npages)
{
	uint64_t c = 0;
	for (uint64_t i = 0; i < (npages + 63) / 64; i++)
		c += (uint64_t)__builtin_popcountll(b[i]);
	return c;
}
static bool bm_equal(const uint64_t *a, const uint64_t *b, uint64_t npages)
{
	return !memcmp(a, b, (npages + 63) / 64 * 8);
}

/* n distinct random page offsets in [0, npages). */
static uint64_t *distinct(uint64_t npages, uint64_t n)
{
	uint64_t *seen = bm_alloc(npages), *out = malloc(n * 8);
	for (uint64_t i = 0; i < n;) {
		uint64_t p = rnd() % npages;
		if (!bm_test(seen, p)) {
			bm_set(seen, p);
			out[i++] = p;
		}
	}
	free(seen);
	return out;
}

static uint64_t page_value(struct kd_kvm *k, uint32_t slot, uint64_t off)
{
	void *host;
	uint64_t size;
	if (kd_kvm_slot_memory(k, slot, &host, &size))
		return ~0ull;
	return *(volatile uint64_t *)((uint8_t *)host + off * 4096);
}

/* ---- classic GET with the dirty_log_test invariants ---- */

struct tslot {
	uint32_t id;
	uint64_t gpa, npages;
	uint64_t *want, *got, *ever;
};

static void test_classic(void)
{
	printf("== classic GET_DIRTY_LOG\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 0, &k), 0);
	if (!k)
		return;
	struct tslot s[2] = {
		{.id = 0, .gpa = 4 * GIB, .npages = (GIB >> 12) + 3}, /* 1 GiB + 3 pages */
		{.id = 1, .gpa = 100 * GIB + 8192, .npages = 5000},   /* above 64 GiB */
	};
	for (int i = 0; i < 2; i++) {
		CHECK_RC(kd_kvm_set_user_memory_region(k, s[i].id, LOG, s[i].gpa, s[i].npages * 4096), 0);
		s[i].want = bm_alloc(s[i].npages);
		s[i].got = bm_alloc(s[i].npages);
		s[i].ever = bm_alloc(s[i].npages);
	}
	enum { N = 3000, ROUNDS = 8 };
	uint64_t gfns[N];
	for (uint64_t iter = 1; iter <= ROUNDS; iter++) {
		for (int i = 0; i < 2; i++)
			memset(s[i].want, 0, (s[i].npages + 63) / 64 * 8);
		for (int j = 0; j < N; j++) {
			/* mostly slot 0, some duplicates, always the last 3 pages once */
			int i = j % 4 == 3;
			uint64_t off = j < 3 ? s[0].npages - 1 - j : rnd() % s[i].npages;
			if (j < 3)
				i = 0;
			if (j % 10 == 9)
				off = (gfns[j - 1] - (s[i].gpa >> 12)) % s[i].npages;
			gfns[j] = (s[i].gpa >> 12) + off;
			bm_set(s[i].want, off);
			bm_set(s[i].ever, off);
		}
		uint64_t applied = 0;
		uint32_t exitr = 99;
		CHECK_RC(kd_kvm_write(k, 0, gfns, N, iter, &applied, &exitr), 0);
		CHECK(applied == N && exitr == 0, "applied %lu exit %u", applied, exitr);
		for (int i = 0; i < 2; i++) {
			CHECK_RC(kd_kvm_get_dirty_log(k, s[i].id, s[i].got), 0);
			CHECK(bm_equal(s[i].got, s[i].want, s[i].npages),
			      "iter %lu slot %u: got %lu dirty, want %lu", iter, s[i].id,
			      bm_count(s[i].got, s[i].npages), bm_count(s[i].want, s[i].npages));
			/* dirty_log_test: dirty pages hold this round's value, clean
			 * pages (written before) an older one. */
			uint64_t bad = 0;
			for (uint64_t p = 0; p < s[i].npages; p++) {
				if (!bm_test(s[i].ever, p))
					continue;
				uint64_t v = page_value(k, s[i].id, p);
				if (bm_test(s[i].got, p) ? v != iter : v >= iter)
					bad++;
			}
			CHECK(bad == 0, "iter %lu slot %u: %lu pages break the invariant", iter,
			      s[i].id, bad);
			CHECK_RC(kd_kvm_get_dirty_log(k, s[i].id, s[i].got), 0);
			CHECK(bm_count(s[i].got, s[i].npages) == 0, "second GET not empty: %lu",
			      bm_count(s[i].got, s[i].npages));
		}
	}
	printf("   %d rounds of %d writes over 2 slots: dirty sets exact, invariants hold\n",
	       ROUNDS, N);
	for (int i = 0; i < 2; i++) {
		free(s[i].want);
		free(s[i].got);
		free(s[i].ever);
	}
	kd_kvm_close(k);
}

/* ---- manual protect, CLEAR, INITIALLY_SET ---- */

static void test_manual(bool initially_set)
{
	printf("== manual protect%s\n", initially_set ? " + INITIALLY_SET" : "");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 0, &k), 0);
	if (!k)
		return;
	uint64_t flags = KD_MANUAL_PROTECT_ENABLE | (initially_set ? KD_INITIALLY_SET : 0);
	CHECK_RC(kd_kvm_enable_manual_protect(k, flags), 0);
	const uint64_t np = (GIB >> 12) + 3, base = 2 * GIB;
	CHECK_RC(kd_kvm_set_user_memory_region(k, 5, LOG, base, np * 4096), 0);
	uint64_t *want = bm_alloc(np), *got = bm_alloc(np), *mask = bm_alloc(np);
	const uint64_t nw = (np + 63) / 64;

	if (initially_set) {
		CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0);
		CHECK(bm_count(got, np) == np, "INITIALLY_SET: %lu of %lu bits set", bm_count(got, np), np);
		CHECK(got[nw - 1] == 7, "bits past the slot end: %#lx", got[nw - 1]);
		for (uint64_t i = 0; i < nw; i++)
			want[i] = got[i];
	}
	for (int round = 0; round < 6; round++) {
		enum { N = 2000 };
		uint64_t gfns[N];
		for (int j = 0; j < N; j++) {
			uint64_t off = rnd() % np;
			gfns[j] = (base >> 12) + off;
			bm_set(want, off);
		}
		uint64_t applied;
		uint32_t exitr;
		CHECK_RC(kd_kvm_write(k, 0, gfns, N, 100 + round, &applied, &exitr), 0);
		CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0);
		CHECK(bm_equal(got, want, np), "round %d: got %lu want %lu", round, bm_count(got, np),
		      bm_count(want, np));
		CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0); /* manual: GET does not clear */
		CHECK(bm_equal(got, want, np), "round %d: second GET changed", round);
		/* Random aligned CLEARs with random masks. */
		for (int c = 0; c < 20; c++) {
			uint64_t first = (rnd() % nw) * 64;
			uint64_t num = (1 + rnd() % 512) * 64;
			if (first + num > np)
				num = np - first; /* may end unaligned at the slot end */
			for (uint64_t i = 0; i < (num + 63) / 64; i++)
				mask[i] = rnd() & rnd();
			CHECK_RC(kd_kvm_clear_dirty_log(k, 5, first, (uint32_t)num, mask), 0);
			for (uint64_t i = 0; i < num; i++)
				if (bm_test(mask, i))
					want[(first + i) / 64] &= ~(1ull << ((first + i) % 64));
		}
		/* Clear the 3-page tail exactly. */
		mask[0] = 7;
		CHECK_RC(kd_kvm_clear_dirty_log(k, 5, np - 3, 3, mask), 0);
		want[nw - 1] &= ~7ull;
		CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0);
		CHECK(bm_equal(got, want, np), "round %d after CLEAR: got %lu want %lu", round,
		      bm_count(got, np), bm_count(want, np));
	}
	/* CLEAR everything; the log is empty; one write shows up. */
	for (uint64_t i = 0; i < nw; i++)
		mask[i] = ~0ull;
	CHECK_RC(kd_kvm_clear_dirty_log(k, 5, 0, (uint32_t)np, mask), 0);
	CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0);
	CHECK(bm_count(got, np) == 0, "after CLEAR(all): %lu", bm_count(got, np));
	uint64_t g = (base >> 12) + 12345, applied;
	uint32_t exitr;
	CHECK_RC(kd_kvm_write(k, 0, &g, 1, 7, &applied, &exitr), 0);
	CHECK_RC(kd_kvm_get_dirty_log(k, 5, got), 0);
	CHECK(bm_count(got, np) == 1 && bm_test(got, 12345), "one write: %lu", bm_count(got, np));
	printf("   6 rounds: GET keeps bits, 120 random CLEARs + tail CLEAR exact\n");
	free(want);
	free(got);
	free(mask);
	kd_kvm_close(k);
}

/* ---- dirty ring ---- */

static double ns_per(uint64_t ns, uint64_t n) { return n ? (double)ns / (double)n : 0; }

static void test_ring(void)
{
	printf("== dirty ring, 4096 entries\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 4096, &k), 0);
	if (!k)
		return;
	const uint64_t np = (GIB >> 12) + 3, base = 8 * GIB;
	CHECK_RC(kd_kvm_set_user_memory_region(k, 3, LOG, base, np * 4096), 0);
	uint64_t *bm = bm_alloc(np);
	CHECK_RC(kd_kvm_get_dirty_log(k, 3, bm), -ENXIO);

	enum { N = 5000 };
	uint64_t *off = distinct(np, N), gfns[N];
	for (int i = 0; i < N; i++)
		gfns[i] = (base >> 12) + off[i];
	uint64_t applied = 0;
	uint32_t exitr = 0;
	uint64_t t0 = now_ns();
	CHECK_RC(kd_kvm_write(k, 0, gfns, N, 42, &applied, &exitr), 0);
	uint64_t t_write = now_ns() - t0;
	CHECK(applied == 4032 && exitr == KD_EXIT_DIRTY_RING_FULL, "applied %lu exit %u", applied,
	      exitr);
	uint64_t bad = 0;
	for (int i = 0; i < N; i++)
		bad += page_value(k, 3, off[i]) != (i < (int)applied ? 42u : 0u);
	CHECK(bad == 0, "%lu pages hold the wrong value after the full exit", bad);

	/* While full: nothing is written. */
	uint64_t a2 = 1;
	CHECK_RC(kd_kvm_write(k, 0, gfns + applied, N - applied, 42, &a2, &exitr), 0);
	CHECK(a2 == 0 && exitr == KD_EXIT_DIRTY_RING_FULL, "while full: applied %lu exit %u", a2,
	      exitr);

	struct kd_dirty_gfn *out = calloc(8192, sizeof(*out));
	uint64_t count = 0;
	t0 = now_ns();
	CHECK_RC(kd_kvm_ring_harvest(k, 0, out, 8192, &count), 0);
	uint64_t t_harvest = now_ns() - t0;
	CHECK(count == 4032, "harvested %lu", count);
	bad = 0;
	for (uint64_t i = 0; i < count && i < N; i++)
		bad += out[i].slot != 3 || out[i].offset != off[i] || out[i].flags != KD_DIRTY_GFN_F_DIRTY;
	CHECK(bad == 0, "%lu entries out of order or wrong", bad);
	struct kd_dirty_gfn *ents;
	uint32_t nents;
	CHECK_RC(kd_kvm_ring_entries(k, 0, &ents, &nents), 0);
	CHECK(nents == 4096 && ents[0].flags == KD_DIRTY_GFN_F_RESET, "entries %u flags %u", nents,
	      ents[0].flags);
	uint64_t reset = 0;
	t0 = now_ns();
	CHECK_RC(kd_kvm_reset_dirty_rings(k, &reset), 0);
	uint64_t t_reset = now_ns() - t0;
	CHECK(reset == 4032, "reset %lu", reset);

	/* Writes resume after the reset. */
	uint64_t rest = N - applied;
	CHECK_RC(kd_kvm_write(k, 0, gfns + applied, rest, 43, &a2, &exitr), 0);
	CHECK(a2 == rest && exitr == 0, "resume: applied %lu of %lu exit %u", a2, rest, exitr);
	CHECK_RC(kd_kvm_ring_harvest(k, 0, out, 8192, &count), 0);
	bad = count != rest;
	for (uint64_t i = 0; i < count && i < rest; i++)
		bad += out[i].offset != off[applied + i];
	CHECK(bad == 0, "after resume: harvested %lu want %lu in order", count, rest);
	CHECK_RC(kd_kvm_reset_dirty_rings(k, &reset), 0);
	CHECK(reset == rest, "reset %lu want %lu", reset, rest);
	/* Re-write pages written before: each one faults and is pushed again. */
	CHECK_RC(kd_kvm_write(k, 0, gfns, 1000, 44, &a2, &exitr), 0);
	CHECK_RC(kd_kvm_ring_harvest(k, 0, out, 8192, &count), 0);
	CHECK(a2 == 1000 && count == 1000, "re-write: applied %lu harvested %lu", a2, count);
	CHECK_RC(kd_kvm_reset_dirty_rings(k, &reset), 0);
	CHECK_RC(kd_kvm_reset_dirty_rings(k, &reset), 0);
	CHECK(reset == 0, "empty reset %lu", reset);
	printf("   5000 distinct pages: applied %lu, exit 31; harvest 4032 in order; reset 4032; "
	       "resume ok\n", applied);
	printf("   TIMING ring: write to full %.2f us/page; harvest %.1f ns/entry; reset %.1f "
	       "ns/entry (4032 entries)\n",
	       ns_per(t_write, 4032) / 1000, ns_per(t_harvest, 4032), ns_per(t_reset, 4032));
	free(out);
	free(off);
	free(bm);
	kd_kvm_close(k);
}

/* ---- two vCPUs at once ---- */

struct wjob {
	struct kd_kvm *k;
	uint32_t vcpu;
	uint64_t *gfns, n, applied;
	int rc;
};

static void *writer(void *p)
{
	struct wjob *j = p;
	uint32_t exitr;
	j->rc = kd_kvm_write(j->k, j->vcpu, j->gfns, j->n, j->vcpu + 1, &j->applied, &exitr);
	return NULL;
}

static void test_two_vcpus(void)
{
	printf("== two vCPUs writing concurrently\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(2, 0, &k), 0);
	if (!k)
		return;
	const uint64_t np = 64ull << 18, base = 300 * GIB; /* 64 GiB */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 9, LOG, base, np * 4096), 0);
	enum { N = 20000 };
	uint64_t *off = distinct(np, 2 * N), *g = malloc(2 * N * 8), *want = bm_alloc(np),
		 *got = bm_alloc(np);
	for (int i = 0; i < 2 * N; i++) {
		g[i] = (base >> 12) + off[i];
		bm_set(want, off[i]);
	}
	struct wjob j[2] = {{k, 0, g, N, 0, 0}, {k, 1, g + N, N, 0, 0}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, writer, &j[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	CHECK(j[0].rc == 0 && j[1].rc == 0 && j[0].applied == N && j[1].applied == N,
	      "rc %d %d applied %lu %lu", j[0].rc, j[1].rc, j[0].applied, j[1].applied);
	CHECK_RC(kd_kvm_get_dirty_log(k, 9, got), 0);
	CHECK(bm_equal(got, want, np), "got %lu want %lu", bm_count(got, np), bm_count(want, np));
	uint64_t bad = 0;
	for (int i = 0; i < 2 * N; i++)
		bad += page_value(k, 9, off[i]) != (uint64_t)(i < N ? 1 : 2);
	CHECK(bad == 0, "%lu pages with the wrong value", bad);
	/* Same vCPU from two threads at once: one of them may see -EBUSY. */
	printf("   2 x %d writes over a 64 GiB slot: union exact\n", N);
	free(off);
	free(g);
	free(want);
	free(got);
	kd_kvm_close(k);
}

/* ---- the internal slot gets out of the user's way ---- */

static void test_internal_collisions(void)
{
	printf("== user slots on the internal slot's id and address\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 0, &k), 0);
	if (!k)
		return;
	struct kd_kvm_internal_info a, b, c;
	CHECK_RC(kd_kvm_internal_info(k, &a), 0);
	printf("   internal slot: id %u at %#lx, %lu MiB; MAXPHYADDR %u, %s pages\n", a.slot, a.gpa,
	       a.size >> 20, a.maxphyaddr, a.gbpages ? "1 GiB" : "2 MiB");
	/* Deleting the internal id is, for the user, deleting a missing slot. */
	CHECK_RC(kd_kvm_set_user_memory_region(k, a.slot, 0, 0, 0), -EINVAL);
	CHECK_RC(kd_kvm_internal_info(k, &b), 0);
	CHECK(b.slot != a.slot, "internal still at id %u", b.slot);
	/* GET on the internal's id: as a missing slot. */
	uint64_t bm[64] = {0};
	CHECK_RC(kd_kvm_get_dirty_log(k, b.slot, bm), -ENOENT);

	/* Same id and same address as the internal slot, with logging. */
	CHECK_RC(kd_kvm_set_user_memory_region(k, b.slot, LOG, b.gpa, 4ull << 20), 0);
	CHECK_RC(kd_kvm_internal_info(k, &c), 0);
	CHECK(c.slot != b.slot && (c.gpa >= b.gpa + (4ull << 20) || c.gpa + c.size <= b.gpa),
	      "internal not moved: id %u gpa %#lx", c.slot, c.gpa);
	uint64_t gfns[3] = {b.gpa >> 12, (b.gpa >> 12) + 1, (b.gpa >> 12) + 1023};
	uint64_t applied;
	uint32_t exitr;
	CHECK_RC(kd_kvm_write(k, 0, gfns, 3, 5, &applied, &exitr), 0);
	CHECK_RC(kd_kvm_get_dirty_log(k, b.slot, bm), 0);
	CHECK(bm[0] == 3 && bm[15] == 1ull << 63 && bm_count(bm, 1024) == 3,
	      "dirty %#lx %#lx count %lu", bm[0], bm[15], bm_count(bm, 1024));
	/* A slot overlapping the internal range's start with another id. */
	uint64_t s7 = c.gpa - (2ull << 20);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 7, LOG, s7, 8ull << 20), 0);
	struct kd_kvm_internal_info d;
	CHECK_RC(kd_kvm_internal_info(k, &d), 0);
	CHECK(d.gpa + d.size <= s7 || d.gpa >= s7 + (8ull << 20), "internal overlaps slot 7");
	uint64_t g2 = s7 >> 12;
	CHECK_RC(kd_kvm_write(k, 0, &g2, 1, 6, &applied, &exitr), 0);
	CHECK_RC(kd_kvm_get_dirty_log(k, 7, bm), 0);
	CHECK(bm[0] == 1 && bm_count(bm, 2048) == 1, "slot 7: %#lx", bm[0]);
	/* Overlap with a user slot is still EEXIST, exactly as the kernel says. */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 8, 0, b.gpa, 4096), -EEXIST);
	/* Writes to the internal slot's pages are refused: they are in no user slot. */
	uint64_t gi = d.gpa >> 12;
	CHECK_RC(kd_kvm_write(k, 0, &gi, 1, 0, &applied, &exitr), -EFAULT);
	/* Flags-only change, move, delete. */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 7, 0, s7, 8ull << 20), 0);
	CHECK_RC(kd_kvm_get_dirty_log(k, 7, bm), -ENOENT);
	CHECK(page_value(k, 7, 0) == 6, "memory kept across a flags change");
	CHECK_RC(kd_kvm_set_user_memory_region(k, 7, 0, 16 * GIB, 8ull << 20), 0);
	CHECK(page_value(k, 7, 0) == 6, "memory kept across a move");
	CHECK_RC(kd_kvm_set_user_memory_region(k, 7, 0, 0, 0), 0);
	CHECK_RC(kd_kvm_set_user_memory_region(k, b.slot, 0, 0, 0), 0);
	CHECK_RC(kd_kvm_internal_info(k, &d), 0);
	printf("   internal slot moved %u times; user calls saw only kernel results\n", d.moves - 1);
	kd_kvm_close(k);
}

/* ---- top of the guest-physical space ---- */

static void test_high(void)
{
	printf("== slots near the top of guest-physical space\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 0, &k), 0);
	if (!k)
		return;
	struct kd_kvm_internal_info a;
	kd_kvm_internal_info(k, &a);
	uint64_t lo_top = a.addr_limit < (1ull << 47) ? a.addr_limit : (1ull << 47);
	/* Just below 2^47 (where the internal slot sits), and above it. */
	uint64_t g[2] = {(lo_top - (64ull << 20)) >> 12, 0};
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, LOG, lo_top - (64ull << 20), 64ull << 20), 0);
	int n = 1;
	if (a.addr_limit > (1ull << 47)) {
		CHECK_RC(kd_kvm_set_user_memory_region(k, 2, LOG, 1ull << 47, 64ull << 20), 0);
		g[1] = (1ull << 47) >> 12;
		n = 2;
	}
	uint64_t applied = 0;
	uint32_t exitr;
	int rc = kd_kvm_write(k, 0, g, 1, 9, &applied, &exitr);
	CHECK(rc == 0 && applied == 1, "below 2^47: rc %d applied %lu", rc, applied);
	if (n == 2) {
		rc = kd_kvm_write(k, 0, g + 1, 1, 9, &applied, &exitr);
		CHECK(rc == 0 && applied == 1, "at 2^47: rc %d", rc);
		uint64_t bm[256] = {0};
		CHECK_RC(kd_kvm_get_dirty_log(k, 2, bm), 0);
		CHECK(bm[0] == 1, "slot at 2^47: %#lx", bm[0]);
		/* 2^47 is reached through an alias in the lower half, just below
		 * the internal slot. A user slot over that alias: the tables are
		 * rebuilt and both slots still work. */
		struct kd_kvm_internal_info d, e;
		CHECK_RC(kd_kvm_internal_info(k, &d), 0);
		uint64_t lo5 = (d.gpa & ~(GIB - 1)) - 4 * GIB;
		CHECK_RC(kd_kvm_set_user_memory_region(k, 5, LOG, lo5, d.gpa - lo5), 0);
		CHECK_RC(kd_kvm_internal_info(k, &e), 0);
		CHECK(e.moves == d.moves + 1 && e.gpa == d.gpa, "rebuilt in place: moves %u -> %u",
		      d.moves, e.moves);
		uint64_t g3[4] = {(1ull << 47) >> 12, ((1ull << 47) >> 12) + 7, (d.gpa >> 12) - 1,
				  (d.gpa >> 12) - 262144 - 3};
		CHECK_RC(kd_kvm_write(k, 0, g3, 4, 10, &applied, &exitr), 0);
		CHECK_RC(kd_kvm_get_dirty_log(k, 2, bm), 0);
		CHECK(bm[0] == 0x81, "slot at 2^47 after rebuild: %#lx", bm[0]);
		uint64_t np5 = (d.gpa - lo5) >> 12, *b5 = bm_alloc(np5);
		CHECK_RC(kd_kvm_get_dirty_log(k, 5, b5), 0);
		CHECK(bm_count(b5, np5) == 2 && bm_test(b5, np5 - 1) && bm_test(b5, np5 - 262144 - 3),
		      "slot 5: %lu dirty", bm_count(b5, np5));
		CHECK(page_value(k, 2, 0) == 10 && page_value(k, 2, 7) == 10 &&
			      page_value(k, 5, np5 - 1) == 10 && page_value(k, 5, np5 - 262147) == 10,
		      "values after rebuild");
		free(b5);
		printf("   slot at 2^47 via a lower-half alias; alias dropped when a slot covered it\n");
	}
	/* A slot the guest cannot reach (>= 2^MAXPHYADDR): the kernel takes it,
	 * writes say -ERANGE. */
	if (a.addr_limit < (1ull << 60)) {
		CHECK_RC(kd_kvm_set_user_memory_region(k, 4, LOG, a.addr_limit, 1ull << 20), 0);
		uint64_t gh = a.addr_limit >> 12;
		CHECK_RC(kd_kvm_write(k, 0, &gh, 1, 9, &applied, &exitr), -ERANGE);
	}
	kd_kvm_close(k);
}

/* ---- errno table ---- */

static void test_errors(void)
{
	printf("== errno table\n");
	struct kd_kvm *k;
	CHECK_RC(kd_kvm_open(1, 3 * 4096, &k), -EINVAL);
	CHECK_RC(kd_kvm_open(1, 131072, &k), -E2BIG);
	CHECK_RC(kd_kvm_open(1, 16, &k), -EINVAL); /* smaller than a page */
	CHECK_RC(kd_kvm_open(0, 0, &k), -EINVAL);
	CHECK_RC(kd_kvm_open(1, 0, &k), 0);
	if (!k)
		return;
	CHECK_RC(kd_kvm_set_user_memory_region(k, 32764, 0, 0, 1 << 20), -EINVAL);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 0, 0x1000, 1000), -EINVAL);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 0, 0x800, 4096), -EINVAL);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 1u << 7, 0, 4096), -EINVAL);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 0, 0, (1ull << 43)), -EINVAL); /* 2^31 pages */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 0, ~0ull << 12, 1 << 20), -EINVAL); /* wraps */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, 0, 0, 0), -EINVAL); /* delete missing */
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, LOG, 0, 1 << 20), 0);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 2, LOG, 0x80000, 1 << 20), -EEXIST);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 1, LOG, 0, 2 << 20), -EINVAL); /* resize */
	uint64_t bm[8] = {~0ull, ~0ull, ~0ull, ~0ull};
	CHECK_RC(kd_kvm_get_dirty_log(k, 2, bm), -ENOENT);
	CHECK_RC(kd_kvm_get_dirty_log(k, 32764, bm), -EINVAL);
	/* The kernel accepts CLEAR without manual protect (it checks no mode). */
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 0, 64, bm), 0);
	CHECK_RC(kd_kvm_enable_manual_protect(k, 1u << 5), -EINVAL);
	CHECK_RC(kd_kvm_enable_manual_protect(k, KD_MANUAL_PROTECT_ENABLE), 0);
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 1, 64, bm), -EINVAL);   /* first_page % 64 */
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 0, 65, bm), -EINVAL);   /* num_pages % 64 */
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 192, 128, bm), -EINVAL); /* past the end */
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 320, 0, bm), -EINVAL); /* first > npages */
	CHECK_RC(kd_kvm_clear_dirty_log(k, 1, 256, 0, bm), 0);
	CHECK_RC(kd_kvm_clear_dirty_log(k, 2, 0, 64, bm), -ENOENT);
	uint64_t g = 1ull << 40, applied;
	uint32_t exitr;
	CHECK_RC(kd_kvm_write(k, 0, &g, 1, 0, &applied, &exitr), -EFAULT);
	CHECK_RC(kd_kvm_write(k, 1, &g, 1, 0, &applied, &exitr), -EINVAL);
	struct kd_dirty_gfn e;
	uint64_t count;
	CHECK_RC(kd_kvm_ring_harvest(k, 0, &e, 1, &count), -EINVAL);
	CHECK_RC(kd_kvm_reset_dirty_rings(k, &count), -EINVAL);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 3, KD_MEM_READONLY, 16 << 20, 1 << 20), 0);
	g = (16 << 20) >> 12;
	CHECK_RC(kd_kvm_write(k, 0, &g, 1, 0, &applied, &exitr), -EFAULT);
	CHECK_RC(kd_kvm_set_user_memory_region(k, 3, 0, 16 << 20, 1 << 20), -EINVAL); /* RO toggle */
	kd_kvm_close(k);
	printf("   done\n");
}

/* ---- timings ---- */

static int cmp_u64v(const void *a, const void *b) { return cmp_u64(a, b); }
static uint64_t median(uint64_t *v, int n)
{
	qsort(v, (size_t)n, 8, cmp_u64v);
	return v[n / 2];
}

static void bench_get(void)
{
	printf("== timings (medians; this host is noisy)\n");
	const uint64_t sizes[3] = {1, 64, 512};
	for (int si = 0; si < 3; si++) {
		uint64_t gib = sizes[si], np = gib << 18;
		struct kd_kvm *k;
		if (kd_kvm_open(1, 0, &k))
			return;
		int r = kd_kvm_set_user_memory_region(k, 0, LOG, 4 * GIB, np * 4096);
		CHECK(r == 0, "%lu GiB slot: %d", gib, r);
		uint64_t *bm = bm_alloc(np);
		uint64_t t[7], w[7], w1 = 0;
		kd_kvm_get_dirty_log(k, 0, bm);
		for (int i = 0; i < 7; i++) {
			uint64_t t0 = now_ns();
			kd_kvm_get_dirty_log(k, 0, bm);
			t[i] = now_ns() - t0;
		}
		uint64_t clean = median(t, 7);
		uint64_t *off = distinct(np, 1000), g[1000];
		for (int i = 0; i < 1000; i++)
			g[i] = (4 * GIB >> 12) + off[i];
		for (int i = 0; i < 7; i++) {
			uint64_t applied;
			uint32_t exitr;
			uint64_t t0 = now_ns();
			kd_kvm_write(k, 0, g, 1000, i, &applied, &exitr);
			w[i] = now_ns() - t0;
			if (i == 0)
				w1 = w[0];
			t0 = now_ns();
			kd_kvm_get_dirty_log(k, 0, bm);
			t[i] = now_ns() - t0;
			CHECK(bm_count(bm, np) == 1000, "%lu GiB: %lu dirty", gib, bm_count(bm, np));
		}
		uint64_t dirty = median(t, 7), wr = median(w + 1, 6);
		/* Manual protect: GET (copy) + CLEAR(all) with 1000 dirty. */
		kd_kvm_enable_manual_protect(k, KD_MANUAL_PROTECT_ENABLE);
		uint64_t *ones = bm_alloc(np);
		memset(ones, 0xff, (np + 63) / 64 * 8);
		uint64_t mg[5], mc[5];
		for (int i = 0; i < 5; i++) {
			uint64_t applied;
			uint32_t exitr;
			kd_kvm_write(k, 0, g, 1000, i, &applied, &exitr);
			uint64_t t0 = now_ns();
			kd_kvm_get_dirty_log(k, 0, bm);
			mg[i] = now_ns() - t0;
			t0 = now_ns();
			kd_kvm_clear_dirty_log(k, 0, 0, (uint32_t)np, ones);
			mc[i] = now_ns() - t0;
		}
		printf("   %3lu GiB slot: classic GET clean %8.1f us, 1000 dirty %8.1f us; "
		       "manual GET %8.1f us + CLEAR(all) %8.1f us\n",
		       gib, clean / 1e3, dirty / 1e3, median(mg, 5) / 1e3, median(mc, 5) / 1e3);
		printf("   %3lu GiB slot: guest write of 1000 pages: first touch %.2f us/page, "
		       "re-dirty after GET %.2f us/page\n",
		       gib, w1 / 1e3 / 1000, wr / 1e3 / 1000);
		free(off);
		free(ones);
		free(bm);
		kd_kvm_close(k);
	}
	/* A larger round: 10^4 re-dirtied pages, and rewriting pages still
	 * writable (no fault: the guest's native speed). */
	struct kd_kvm *k;
	if (kd_kvm_open(1, 0, &k))
		return;
	kd_kvm_set_user_memory_region(k, 0, LOG, 4 * GIB, GIB);
	enum { N = 10000 };
	uint64_t *off = distinct(GIB >> 12, N), *bm = bm_alloc(GIB >> 12);
	for (int i = 0; i < N; i++)
		off[i] += 4 * GIB >> 12;
	uint64_t applied, t[5], t2[5];
	uint32_t exitr;
	kd_kvm_write(k, 0, off, N, 1, &applied, &exitr);
	for (int i = 0; i < 5; i++) {
		kd_kvm_get_dirty_log(k, 0, bm);
		uint64_t t0 = now_ns();
		kd_kvm_write(k, 0, off, N, 2, &applied, &exitr);
		t[i] = now_ns() - t0;
		t0 = now_ns();
		kd_kvm_write(k, 0, off, N, 3, &applied, &exitr);
		t2[i] = now_ns() - t0;
	}
	printf("   guest write round of %d pages: re-dirty after GET %.2f us/page; "
	       "already writable %.3f us/page\n",
	       N, median(t, 5) / 1e3 / N, median(t2, 5) / 1e3 / N);
	free(off);
	free(bm);
	kd_kvm_close(k);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *why = kd_kvm_unavailable_reason();
	if (why) {
		printf("SKIP: %s\n", why);
		return 77;
	}
	bool bench = !(argc > 1 && !strcmp(argv[1], "--no-bench"));
	test_errors();
	test_internal_collisions();
	test_high();
	test_classic();
	test_manual(false);
	test_manual(true);
	test_ring();
	test_two_vcpus();
	if (bench)
		bench_get();
	return check_summary();
}
