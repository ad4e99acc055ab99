/*
 * test_memslot_race.c - kd_write racing every kind of memslot change, on
 * every emulated backend, write protection and PML, with guest memory (so a
 * write into freed memory is a crash, or an ASan report in CI):
 *
 *  - vCPU 0 writes the gfns A of slot 0, which never changes, over and over;
 *  - vCPU 1 writes rels B of slot 1 at both of its possible bases;
 *  - the updater deletes and re-creates, moves and toggles the log of
 *    slot 1, and toggles the log of slot 2 (which nobody writes);
 *  - the collector collects slots 0 and 1 (GET on slot 1 where the backend
 *    has a bitmap).
 *
 * What must hold, whatever the interleaving (nothing here depends on how
 * many iterations the threads got through):
 *  - every memslot call succeeds (each is valid for the state the updater
 *    keeps); kd_write on slot 0 always succeeds (a ring-full exit is retried
 *    after the collector's reset); on slot 1 it succeeds or fails with
 *    -EFAULT (that base had no slot at that instant), nothing else;
 *  - collects of slot 0 succeed and return only gfns of A, and the union of
 *    everything collected from slot 0 is exactly A (no write lost); collects
 *    and GETs of slot 1 succeed or fail with -ENOENT, and every page they
 *    report is a rel of B;
 *  - slot 0's memory holds, on every page of A, the value of the last pass.
 *
 * Usage: test_memslot_race [ms per configuration, default 300]. The Python
 * harness (tests/test_memslot_race.py) runs it in a subprocess: a signal
 * fails the test, it does not kill pytest. Prints "N passed, 0 failed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"

#include "check.h"

#define PAGES 4096u
#define SLOT1_BASES {8192u, 16384u}
#define SLOT2_BASE 32768u
#define NA 700u /* gfns of A (slot 0) */
#define NB 300u /* rels of B (slot 1) */

struct race {
	kd_vm *vm;
	int ring, bitmap;
	int stop;        /* set by main when the time is up */
	int writers_out; /* writers still running (the updater stops last) */
	uint64_t a[NA], b_rel[NB];
	unsigned char in_a[PAGES], in_b[PAGES], seen_a[PAGES];
	uint64_t last_value; /* vCPU 0's last pass */
	/* failures found by the threads (checked by main) */
	int bad_memslot, bad_write0, bad_write1, bad_collect0, bad_collect1;
	int first_errno[5];
};

static void note(struct race *t, int *bad, int which, int r)
{
	if (!__atomic_fetch_add(bad, 1, __ATOMIC_RELAXED))
		t->first_errno[which] = r;
}

static int stopping(struct race *t)
{
	return __atomic_load_n(&t->stop, __ATOMIC_ACQUIRE);
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Write gfns[0..n) on vcpu until applied, retrying ring-full exits. */
static int write_all(struct race *t, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		     uint64_t value)
{
	uint64_t done = 0;

	while (done < n) {
		struct kd_write_result res = {0};
		int r = kd_write(t->vm, vcpu, gfns + done, n - done, value, &res);
		if (r)
			return r;
		done += res.applied;
		if (done < n)
			sched_yield(); /* ring full: the collector resets it */
	}
	return 0;
}

static void *writer0(void *arg)
{
	struct race *t = arg;

	for (uint64_t pass = 1; !stopping(t); pass++) {
		int r = write_all(t, 0, t->a, NA, pass);
		if (r) {
			note(t, &t->bad_write0, 1, r);
			break;
		}
		t->last_value = pass;
	}
	__atomic_fetch_sub(&t->writers_out, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *writer1(void *arg)
{
	struct race *t = arg;
	const uint64_t bases[] = SLOT1_BASES;
	uint64_t gfns[NB];

	for (uint64_t pass = 1; !stopping(t); pass++) {
		uint64_t base = bases[pass & 1];
		int r;
		for (uint32_t i = 0; i < NB; i++)
			gfns[i] = base + t->b_rel[i];
		/* all or nothing: -EFAULT when no slot is at that base now */
		r = write_all(t, 1, gfns, NB, pass);
		if (r && r != -EFAULT) {
			note(t, &t->bad_write1, 2, r);
			break;
		}
	}
	__atomic_fetch_sub(&t->writers_out, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *updater(void *arg)
{
	struct race *t = arg;
	const uint64_t bases[] = SLOT1_BASES;
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	int exists = 1, at = 0, log1 = 1, log2 = 0;

	/* until the writers are done: the last changes race their last writes */
	while (__atomic_load_n(&t->writers_out, __ATOMIC_ACQUIRE) > 0) {
		uint64_t op = xorshift(&seed) % 4;
		uint32_t flags;
		int r = 0;
		if (!exists) {
			at = (int)(xorshift(&seed) & 1);
			log1 = (int)(xorshift(&seed) & 1);
			flags = log1 ? KD_MEM_LOG_DIRTY_PAGES : 0;
			r = kd_set_user_memory_region(t->vm, 1, flags, bases[at] << KD_PAGE_SHIFT,
						      (uint64_t)PAGES << KD_PAGE_SHIFT);
			exists = 1;
		} else if (op == 0) {
			r = kd_set_user_memory_region(t->vm, 1, 0, bases[at] << KD_PAGE_SHIFT, 0);
			exists = 0;
		} else if (op == 1) {
			at ^= 1;
			flags = log1 ? KD_MEM_LOG_DIRTY_PAGES : 0;
			r = kd_set_user_memory_region(t->vm, 1, flags, bases[at] << KD_PAGE_SHIFT,
						      (uint64_t)PAGES << KD_PAGE_SHIFT);
		} else if (op == 2) {
			log1 ^= 1;
			flags = log1 ? KD_MEM_LOG_DIRTY_PAGES : 0;
			r = kd_set_user_memory_region(t->vm, 1, flags, bases[at] << KD_PAGE_SHIFT,
						      (uint64_t)PAGES << KD_PAGE_SHIFT);
		} else {
			log2 ^= 1;
			r = kd_set_user_memory_region(t->vm, 2, log2 ? KD_MEM_LOG_DIRTY_PAGES : 0,
						      (uint64_t)SLOT2_BASE << KD_PAGE_SHIFT,
						      (uint64_t)PAGES << KD_PAGE_SHIFT);
		}
		if (r) {
			note(t, &t->bad_memslot, 0, r);
			break;
		}
	}
	return NULL;
}

/* Collect a whole slot; 0 or the errno, gfns into out[*n]. */
static int collect(struct race *t, uint32_t slot, uint64_t *out, uint64_t *n)
{
	uint32_t id = slot;
	struct kd_collect_slots_result sres;
	int r;

	r = kd_collect_slots(t->vm, &id, 1, 0, 0, out, PAGES, &sres);
	*n = r ? 0 : sres.count;
	return r;
}

static void check_slot1_pages(struct race *t, const uint64_t *gfns, uint64_t n)
{
	const uint64_t bases[] = SLOT1_BASES;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t g = gfns[i], rel;
		if (g >= bases[0] && g < bases[0] + PAGES)
			rel = g - bases[0];
		else if (g >= bases[1] && g < bases[1] + PAGES)
			rel = g - bases[1];
		else
			rel = PAGES;
		if (rel >= PAGES || !t->in_b[rel]) {
			note(t, &t->bad_collect1, 4, (int)g);
			return;
		}
	}
}

static void collect0(struct race *t, uint64_t *buf)
{
	uint64_t n;
	int r = collect(t, 0, buf, &n);

	if (r) {
		note(t, &t->bad_collect0, 3, r);
		return;
	}
	for (uint64_t i = 0; i < n; i++) {
		if (buf[i] >= PAGES || !t->in_a[buf[i]]) {
			note(t, &t->bad_collect0, 3, (int)buf[i]);
			return;
		}
		t->seen_a[buf[i]] = 1;
	}
}

static void *collector(void *arg)
{
	struct race *t = arg;
	static _Thread_local uint64_t buf[PAGES], bm[PAGES / 64];

	while (__atomic_load_n(&t->writers_out, __ATOMIC_ACQUIRE) > 0) {
		uint64_t n;
		int r;
		collect0(t, buf);
		r = collect(t, 1, buf, &n);
		if (r && r != -ENOENT)
			note(t, &t->bad_collect1, 4, r);
		check_slot1_pages(t, buf, n);
		if (t->bitmap) {
			r = kd_get_dirty_log(t->vm, 1, bm, PAGES / 64);
			if (r && r != -ENOENT)
				note(t, &t->bad_collect1, 4, r);
			for (uint32_t w = 0; !r && w < PAGES / 64; w++)
				for (uint64_t bits = bm[w]; bits; bits &= bits - 1) {
					uint64_t rel = w * 64 + (uint64_t)__builtin_ctzll(bits);
					if (!t->in_b[rel])
						note(t, &t->bad_collect1, 4, (int)rel);
				}
		}
		if (t->ring) { /* a ring-full vCPU waits for this reset */
			uint64_t cnt;
			kd_reset_dirty_rings(t->vm, &cnt);
		}
	}
	return NULL;
}

static void run(uint32_t backend, uint32_t tracking, const char *name, unsigned ms)
{
	struct kd_vm_config cfg = {.backend = backend, .nvcpus = 2, .tracking = tracking,
				   .flags = KD_VM_GUEST_MEMORY,
				   .ring_entries = backend == KD_BACKEND_RING ? 4096 : 0};
	static struct race t;
	pthread_t th[4];
	struct timespec d = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	struct kd_slot_info info;
	uint64_t seed = 12345, buf[PAGES], n;
	int r;

	memset(&t, 0, sizeof(t));
	r = kd_vm_create(&cfg, &t.vm);
	if (r == -EINVAL)
		return; /* not a combination the backend has */
	CHECK(r == 0, "%s: kd_vm_create = %d", name, r);
	if (r)
		return;
	t.ring = backend == KD_BACKEND_RING;
	t.bitmap = !t.ring;
	CHECK_RC(kd_set_user_memory_region(t.vm, 0, KD_MEM_LOG_DIRTY_PAGES, 0,
					   (uint64_t)PAGES << KD_PAGE_SHIFT), 0);
	CHECK_RC(kd_set_user_memory_region(t.vm, 1, KD_MEM_LOG_DIRTY_PAGES,
					   (uint64_t)8192 << KD_PAGE_SHIFT,
					   (uint64_t)PAGES << KD_PAGE_SHIFT), 0);
	CHECK_RC(kd_set_user_memory_region(t.vm, 2, 0, (uint64_t)SLOT2_BASE << KD_PAGE_SHIFT,
					   (uint64_t)PAGES << KD_PAGE_SHIFT), 0);
	for (uint32_t i = 0; i < NA;) { /* distinct random pages */
		uint64_t g = xorshift(&seed) % PAGES;
		if (!t.in_a[g]) {
			t.in_a[g] = 1;
			t.a[i++] = g;
		}
	}
	for (uint32_t i = 0; i < NB;) {
		uint64_t g = xorshift(&seed) % PAGES;
		if (!t.in_b[g]) {
			t.in_b[g] = 1;
			t.b_rel[i++] = g;
		}
	}
	t.writers_out = 2;
	pthread_create(&th[0], NULL, writer0, &t);
	pthread_create(&th[1], NULL, writer1, &t);
	pthread_create(&th[2], NULL, updater, &t);
	pthread_create(&th[3], NULL, collector, &t);
	nanosleep(&d, NULL);
	__atomic_store_n(&t.stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);

	CHECK(!t.bad_memslot, "%s: %d memslot calls failed, first %d", name, t.bad_memslot,
	      t.first_errno[0]);
	CHECK(!t.bad_write0, "%s: %d writes to slot 0 failed, first %d", name, t.bad_write0,
	      t.first_errno[1]);
	CHECK(!t.bad_write1, "%s: %d writes to slot 1 failed other than EFAULT, first %d", name,
	      t.bad_write1, t.first_errno[2]);
	CHECK(!t.bad_collect0, "%s: %d bad collects of slot 0, first %d", name, t.bad_collect0,
	      t.first_errno[3]);
	CHECK(!t.bad_collect1, "%s: %d bad collects/GETs of slot 1, first %d", name,
	      t.bad_collect1, t.first_errno[4]);
	/* the final collect: every gfn of A reported at least once, no other */
	collect0(&t, buf);
	n = 0;
	for (uint32_t g = 0; g < PAGES; g++)
		n += t.seen_a[g] != t.in_a[g];
	CHECK(n == 0 && t.last_value > 0, "%s: %lu pages of A missing or extra (%lu passes)",
	      name, (unsigned long)n, (unsigned long)t.last_value);
	CHECK_RC(kd_slot_info(t.vm, 0, &info), 0);
	n = 0;
	for (uint32_t i = 0; info.memory && i < NA; i++)
		n += ((const uint64_t *)info.memory)[t.a[i] << (KD_PAGE_SHIFT - 3)] != t.last_value;
	CHECK(info.memory && n == 0, "%s: %lu pages of A without the last value", name,
	      (unsigned long)n);
	kd_vm_destroy(t.vm);
}

int main(int argc, char **argv)
{
	unsigned ms = argc > 1 ? (unsigned)atoi(argv[1]) : 300;
	static const struct {
		uint32_t backend;
		const char *name;
	} backends[] = {{KD_BACKEND_FLAT, "flat"},	   {KD_BACKEND_TWOLEVEL, "twolevel"},
			{KD_BACKEND_HIER, "hier"},	   {KD_BACKEND_BYTEMAP, "bytemap"},
			{KD_BACKEND_RING, "ring"}};

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t b = 0; b < sizeof(backends) / sizeof(backends[0]); b++) {
		char name[64];
		snprintf(name, sizeof(name), "%s/write_protect", backends[b].name);
		run(backends[b].backend, KD_TRACK_WRITE_PROTECT, name, ms);
		snprintf(name, sizeof(name), "%s/pml", backends[b].name);
		run(backends[b].backend, KD_TRACK_PML, name, ms);
	}
	return check_summary();
}
