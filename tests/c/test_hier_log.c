/*
 * test_hier_log.c - the hierarchical log (csrc/emu/hier_log.c) on its own:
 *  1. model: random writes, collects (ranges, caps), GETs, copies and
 *     CLEARs against a plain reference bitmap, with the structure's
 *     invariants (summary paths, live blocks == dirty groups) after each op;
 *  2. race: writer threads (guest memory, sections, block churn) against a
 *     collector; every page's last written value must have been read by a
 *     collect after it was written;
 *  3. size: four 6 TiB logs (24 TiB), 1000 scattered pages, in bounded
 *     resident memory.
 * Built with csrc/emu/hier_log.c only: cc -pthread -Icsrc/include -Icsrc ...
 * Prints "N passed, 0 failed"; exit status 1 on any failure.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu/hier_log.h"

#include "check.h"

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void no_sync(void *ctx)
{
	(void)ctx;
}

/* ---- 1. model ---- */

static bool path_set(const struct kd_hier *h, uint64_t chunk)
{
	uint64_t node = chunk;
	for (unsigned k = 0; k < h->nlevels; k++, node /= 64)
		if (!(h->level[k][node / 64] & (1ull << (node % 64))))
			return false;
	return true;
}

/* Invariants after every collector call: each dirty chunk's summary path is
 * set; every group with dirty pages holds a block, and a group holding a
 * clean block is a candidate to give it back (h->clean); the leaves are the
 * reference. */
static int check_invariants(const struct kd_hier *h, const uint64_t *ref)
{
	uint64_t linked = 0, bad = 0;
	uint8_t *candidate = calloc(h->ngroups, 1);
	for (uint64_t i = 0; i < h->nclean; i++)
		candidate[h->clean[i]] = 1;
	for (uint64_t g = 0; g < h->ngroups; g++) {
		uint64_t any = 0;
		for (unsigned i = 0; i < KD_HIER_BLOCK_WORDS; i++) {
			uint64_t w = g * KD_HIER_BLOCK_WORDS + i, leaf = 0;
			if (w >= h->nwords)
				break;
			if (h->index[g])
				leaf = *kd_hier_leaf(h, h->index[g], w * 64);
			bad += leaf != ref[w];
			any |= ref[w];
			if (ref[w] && !path_set(h, w / KD_HIER_CHUNK_WORDS))
				bad++;
		}
		linked += h->index[g] != 0;
		bad += any && !h->index[g];
		/* a clean linked block waits for the next call's check, unless
		 * the retirement bound keeps it (retire_slack) */
		bad += !any && h->index[g] && !candidate[g] && !h->retire_slack;
	}
	free(candidate);
	return bad == 0 && linked == kd_hier_blocks_live(h) ? 0 : -1;
}

static void model_run(uint64_t npages, bool initially_set, unsigned rounds, uint32_t slack)
{
	struct kd_hier h;
	struct kd_hier_counts c = {0};
	uint64_t nwords = (npages + 63) / 64;
	uint64_t *ref = calloc(nwords, 8), *bm = calloc(nwords, 8), *gfns = malloc(npages * 8);
	int r = kd_hier_init(&h, npages, initially_set, no_sync, NULL);
	unsigned bad_ops = 0;

	CHECK(r == 0, "init %llu pages: %d", (unsigned long long)npages, r);
	if (r)
		return;
	h.retire_slack = slack;
	if (initially_set)
		for (uint64_t p = 0; p < npages; p++)
			ref[p / 64] |= 1ull << (p % 64);
	for (unsigned round = 0; round < rounds; round++) {
		unsigned op = (unsigned)(rnd() % 8);
		uint64_t nw = 1 + rnd() % 200, spread = rnd() % 3;
		/* writes: clustered, scattered or anywhere */
		for (uint64_t i = 0; i < nw; i++) {
			uint64_t p = spread == 0 ? rnd() % (npages < 4096 ? npages : 4096)
						 : rnd() % npages;
			bool fault = kd_hier_write(&h, p, rnd() & 1);
			bad_ops += fault != !(ref[p / 64] >> (p % 64) & 1);
			ref[p / 64] |= 1ull << (p % 64);
		}
		if (op < 4) { /* collect a range, in bounded steps */
			uint64_t a = rnd() % npages, b = a + rnd() % (npages - a) + 1, cap;
			uint64_t pos = a, resume;
			if (op == 0) {
				a = 0;
				b = npages;
				pos = 0;
			}
			cap = (rnd() & 1) ? b - a : 64 + rnd() % 200;
			while (pos < b) {
				uint64_t n = kd_hier_collect(&h, pos, b, 1000, gfns, cap, &resume, &c);
				uint64_t want = 0;
				for (uint64_t p = pos; p < resume; p++)
					if (ref[p / 64] >> (p % 64) & 1) {
						bad_ops += want >= n || gfns[want] != 1000 + p;
						want++;
						ref[p / 64] &= ~(1ull << (p % 64));
					}
				bad_ops += want != n || resume <= pos;
				if (resume <= pos)
					break;
				pos = resume;
			}
		} else if (op < 6) { /* GET, or a manual-protect copy */
			bool copy = op == 5;
			kd_hier_get(&h, bm, copy, &c);
			bad_ops += memcmp(bm, ref, nwords * 8) != 0;
			if (!copy)
				memset(ref, 0, nwords * 8);
		} else { /* CLEAR a 64-aligned range with a random mask */
			uint64_t a = (rnd() % npages) & ~63ull, num = npages - a;
			if (rnd() & 1 && num > 64)
				num = (rnd() % (num / 64) + 1) * 64;
			for (uint64_t i = 0; i < (num + 63) / 64; i++)
				bm[i] = rnd() & rnd();
			kd_hier_clear(&h, a, num, bm, &c);
			for (uint64_t i = 0; i < (num + 63) / 64; i++)
				ref[a / 64 + i] &= ~bm[i];
			if (npages & 63) /* bits past the end were never set */
				ref[nwords - 1] &= ~0ull >> (64 - (npages & 63));
		}
		if (check_invariants(&h, ref)) {
			bad_ops++;
			break;
		}
	}
	CHECK(bad_ops == 0, "model %llu pages%s: %u bad results",
	      (unsigned long long)npages, initially_set ? " initially set" : "", bad_ops);
	kd_hier_destroy(&h);
	free(ref);
	free(bm);
	free(gfns);
}

/* ---- 2. race ---- */

#define RACE_WRITERS 3
#define RACE_PAGES (1u << 16) /* 32 groups: blocks churn */
#define RACE_SECTION 64

struct race {
	struct kd_hier h;
	uint64_t *memory; /* one value per page */
	pthread_mutex_t section[RACE_WRITERS];
	int stop;
	uint64_t writes[RACE_WRITERS];
};

struct writer_arg {
	struct race *r;
	unsigned id;
};

static void race_sync(void *ctx)
{
	struct race *r = ctx;
	for (unsigned i = 0; i < RACE_WRITERS; i++) {
		pthread_mutex_lock(&r->section[i]);
		pthread_mutex_unlock(&r->section[i]);
	}
}

static void *race_writer(void *p)
{
	struct writer_arg *a = p;
	struct race *r = a->r;
	uint64_t s = 0x1234567ull * (a->id + 1), seq = 0;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		pthread_mutex_lock(&r->section[a->id]); /* guest entry */
		for (unsigned i = 0; i < RACE_SECTION; i++) {
			uint64_t page;
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			/* a few hot groups and a scattered tail */
			page = (s >> 33) % 8 ? (s >> 20) % 4096 : (s >> 20) % RACE_PAGES;
			__atomic_store_n(&r->memory[page], ((uint64_t)a->id << 48) | ++seq,
					 __ATOMIC_RELAXED);
			kd_hier_write(&r->h, page, true);
		}
		pthread_mutex_unlock(&r->section[a->id]);
		__atomic_store_n(&r->writes[a->id], seq, __ATOMIC_RELAXED);
		sched_yield(); /* a guest exit: lets a waiting sync in */
	}
	return NULL;
}

static void race_take(struct race *r, uint64_t *seen, uint64_t *gfns, uint64_t *bm,
		      unsigned how, struct kd_hier_counts *c)
{
	uint64_t pos = 0, resume, n;

	if (how == 0) { /* GET */
		kd_hier_get(&r->h, bm, false, c);
		for (uint64_t p = 0; p < RACE_PAGES; p++)
			if (bm[p / 64] >> (p % 64) & 1)
				seen[p] = __atomic_load_n(&r->memory[p], __ATOMIC_RELAXED);
		return;
	}
	if (how == 1) { /* manual protect: copy, CLEAR what was copied, read */
		kd_hier_get(&r->h, bm, true, c);
		kd_hier_clear(&r->h, 0, RACE_PAGES, bm, c);
		for (uint64_t p = 0; p < RACE_PAGES; p++)
			if (bm[p / 64] >> (p % 64) & 1)
				seen[p] = __atomic_load_n(&r->memory[p], __ATOMIC_RELAXED);
		return;
	}
	while (pos < RACE_PAGES) { /* bounded collects */
		n = kd_hier_collect(&r->h, pos, RACE_PAGES, 0, gfns, how == 2 ? 64 : RACE_PAGES,
				    &resume, c);
		for (uint64_t i = 0; i < n; i++)
			seen[gfns[i]] = __atomic_load_n(&r->memory[gfns[i]], __ATOMIC_RELAXED);
		pos = resume;
	}
}

static void race_run(uint64_t target)
{
	static struct race r;
	pthread_t t[RACE_WRITERS];
	struct writer_arg args[RACE_WRITERS];
	struct kd_hier_counts c = {0};
	uint64_t *seen = calloc(RACE_PAGES, 8), *gfns = malloc(RACE_PAGES * 8);
	uint64_t *bm = calloc(RACE_PAGES / 64, 8), lost = 0, total = 0;

	memset(&r, 0, sizeof(r));
	r.memory = calloc(RACE_PAGES, 8);
	CHECK(kd_hier_init(&r.h, RACE_PAGES, false, race_sync, &r) == 0, "race init");
	r.h.retire_slack = 0; /* every clean block given back: the most churn */
	for (unsigned i = 0; i < RACE_WRITERS; i++) {
		pthread_mutex_init(&r.section[i], NULL);
		args[i] = (struct writer_arg){&r, i};
		pthread_create(&t[i], NULL, race_writer, &args[i]);
	}
	for (unsigned iter = 0;; iter++) { /* until both sides did enough */
		uint64_t done = 0;
		for (unsigned i = 0; i < RACE_WRITERS; i++)
			done += __atomic_load_n(&r.writes[i], __ATOMIC_RELAXED);
		/* enough: writes, collector calls and blocks given back (their
		 * number depends on the scheduling: a loaded machine needs more
		 * calls); bounded, the CHECK below names a shortfall */
		if (iter >= 1000 && done >= target && (c.blocks_freed > 100 || iter >= 1000000))
			break;
		race_take(&r, seen, gfns, bm, iter % 4, &c);
	}
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < RACE_WRITERS; i++) {
		pthread_join(t[i], NULL);
		total += r.writes[i];
	}
	race_take(&r, seen, gfns, bm, 3, &c); /* the final pass */
	race_take(&r, seen, gfns, bm, 3, &c); /* gives back what it left clean */
	for (uint64_t p = 0; p < RACE_PAGES; p++)
		lost += seen[p] != r.memory[p];
	CHECK(lost == 0, "race: %llu pages whose last write no collect saw",
	      (unsigned long long)lost);
	CHECK(c.blocks_freed > 100, "race: blocks churned (%llu freed)",
	      (unsigned long long)c.blocks_freed);
	CHECK(kd_hier_blocks_live(&r.h) == 0, "race: blocks left after the final pass: %llu",
	      (unsigned long long)kd_hier_blocks_live(&r.h));
	printf("race: %llu writes, %llu blocks freed\n", (unsigned long long)total,
	       (unsigned long long)c.blocks_freed);
	kd_hier_destroy(&r.h);
	free(r.memory);
	free(seen);
	free(gfns);
	free(bm);
}

/*
 * 2b. The late writer, step by step: a writer reads index[g] (block b), the
 * collector unlinks b, and the writer's RMW lands in b before its section
 * ends, which is inside sync_writers. With `rival`, another writer takes a
 * new block for the group first (the merge case). Both pages must come out
 * of the next collect.
 */
struct late {
	struct kd_hier *h;
	uint32_t stale_block;
	uint64_t page, rival;
	bool done;
};

static void late_finish(struct late *l)
{
	uint64_t bit = 1ull << (l->page % 64);
	if (l->done)
		return;
	l->done = true;
	if (l->rival != UINT64_MAX)
		kd_hier_write(l->h, l->rival, true);
	/* the rest of kd_hier_write, with the block read before the unlink */
	if (!(__atomic_fetch_or(kd_hier_leaf(l->h, l->stale_block, l->page), bit,
				__ATOMIC_SEQ_CST) & bit))
		kd_hier_mark_summaries(l->h, l->page);
}

static void late_sync(void *ctx)
{
	late_finish(ctx);
}

static void late_run(bool rival)
{
	struct kd_hier h;
	struct late l = {&h, 0, 5000, rival ? 4097 : UINT64_MAX, false};
	struct kd_hier_counts c = {0};
	uint64_t gfns[64], resume, n, got = 0;

	CHECK(kd_hier_init(&h, 1u << 16, false, late_sync, &l) == 0, "late init");
	h.retire_slack = 0;
	kd_hier_write(&h, 4100, false); /* the group's block, with one page */
	l.stale_block = h.index[4100 / KD_HIER_GROUP_PAGES];
	n = kd_hier_collect(&h, 0, 1u << 16, 0, gfns, 64, &resume, &c);
	CHECK(n == 1 && gfns[0] == 4100, "late: first collect");
	/* the next collect gives the clean block back: its sync is where the
	 * late writer finishes */
	for (int pass = 0; pass < 3; pass++) {
		n = kd_hier_collect(&h, 0, 1u << 16, 0, gfns, 64, &resume, &c);
		for (uint64_t i = 0; i < n; i++)
			got |= (gfns[i] == l.page) | (uint64_t)(gfns[i] == l.rival) << 1;
		if (pass == 0) {
			CHECK(l.done, "late%s: the collector waited for the writer's section",
			      rival ? " rival" : "");
			late_finish(&l); /* (if it did not wait, the writer goes on now) */
		}
	}
	CHECK(got == (rival ? 3u : 1u), "late%s: pages collected after the unlink: %llu",
	      rival ? " rival" : "", (unsigned long long)got);
	CHECK(kd_hier_blocks_live(&h) == 0, "late: blocks left");
	kd_hier_destroy(&h);
}

/* ---- 3. size ---- */

static void size_run(void)
{
	enum { SLOTS = 4, DIRTY = 1000 };
	const uint64_t npages = 6ull << 28; /* 6 TiB of 4 KiB pages */
	static struct kd_hier h[SLOTS];
	struct kd_hier_counts c = {0};
	uint64_t pages[DIRTY], gfns[DIRTY + 64], resident = 0, reserved = 0, got = 0, resume, bad = 0;

	for (unsigned s = 0; s < SLOTS; s++)
		CHECK(kd_hier_init(&h[s], npages, false, no_sync, NULL) == 0, "6 TiB init");
	for (unsigned i = 0; i < DIRTY; i++) {
		pages[i] = rnd() % (npages * SLOTS);
		kd_hier_write(&h[pages[i] / npages], pages[i] % npages, false);
	}
	for (unsigned s = 0; s < SLOTS; s++) {
		uint64_t n = kd_hier_collect(&h[s], 0, npages, s * npages, gfns, DIRTY + 64,
					     &resume, &c);
		for (uint64_t i = 0; i < n; i++) {
			bool found = false;
			for (unsigned k = 0; k < DIRTY && !found; k++)
				found = pages[k] == gfns[i];
			bad += !found || (i && gfns[i] <= gfns[i - 1]);
		}
		got += n;
		bad += resume != npages;
		kd_hier_memory(&h[s], &reserved, &resident);
	}
	/* duplicates among the 1000 random pages are vanishingly rare in 24 TiB */
	CHECK(got == DIRTY && bad == 0, "24 TiB: collected %llu of %u, %llu bad",
	      (unsigned long long)got, DIRTY, (unsigned long long)bad);
	CHECK(resident <= 64ull << 20 && reserved >= 4 * (192ull << 20), /* the pools */
	      "24 TiB: %llu bytes resident of %llu reserved", (unsigned long long)resident,
	      (unsigned long long)reserved);
	printf("24 TiB, 1000 dirty: %llu KiB resident\n", (unsigned long long)resident >> 10);
	for (unsigned s = 0; s < SLOTS; s++)
		kd_hier_destroy(&h[s]);
}

/* The retirement bound: rounds of fresh scattered pages (each round's
 * groups left clean by the previous collect) keep at most 2 x the groups a
 * collect visits + retire_slack + one round's new blocks linked; a steady
 * set of pages takes no new block and frees none. */
static void retire_bound_run(void)
{
	enum { DIRTY = 300, ROUNDS = 200 };
	const uint64_t npages = 1ull << 26; /* 256 GiB: 32768 groups */
	struct kd_hier h;
	struct kd_hier_counts c = {0};
	uint64_t pages[DIRTY], gfns[DIRTY + 64], resume, worst = 0, n, lost = 0;

	CHECK(kd_hier_init(&h, npages, false, no_sync, NULL) == 0, "bound init");
	for (unsigned round = 0; round < ROUNDS; round++) {
		for (unsigned i = 0; i < DIRTY; i++) {
			pages[i] = (rnd() % (npages / KD_HIER_GROUP_PAGES)) * KD_HIER_GROUP_PAGES;
			kd_hier_write(&h, pages[i], false);
		}
		if (kd_hier_blocks_live(&h) > worst)
			worst = kd_hier_blocks_live(&h);
		n = kd_hier_collect(&h, 0, npages, 0, gfns, DIRTY + 64, &resume, &c);
		lost += n > DIRTY;
	}
	CHECK(worst <= 2 * DIRTY + KD_HIER_RETIRE_SLACK + DIRTY && c.blocks_freed > 0 && !lost,
	      "bound: %llu blocks linked at worst, %llu freed",
	      (unsigned long long)worst, (unsigned long long)c.blocks_freed);
	n = c.blocks_freed;
	for (unsigned round = 0; round < 20; round++) { /* the last round's pages, steady */
		for (unsigned i = 0; i < DIRTY; i++)
			kd_hier_write(&h, pages[i], false);
		worst = kd_hier_blocks_live(&h);
		kd_hier_collect(&h, 0, npages, 0, gfns, DIRTY + 64, &resume, &c);
	}
	CHECK(kd_hier_blocks_live(&h) == worst && c.blocks_freed - n <= worst,
	      "bound: a steady set keeps its blocks (%llu linked)", (unsigned long long)worst);
	kd_hier_destroy(&h);
}

static void bad_input(void)
{
	struct kd_hier h;
	CHECK(kd_hier_init(&h, 0, false, no_sync, NULL) == -EINVAL, "0 pages");
	CHECK(kd_hier_init(&h, KD_MAX_SLOT_PAGES + 1, false, no_sync, NULL) == -EINVAL,
	      "2^31 pages");
	CHECK(kd_hier_init(&h, 64, false, NULL, NULL) == -EINVAL, "no sync");
}

int main(int argc, char **argv)
{
	/* argv[1]: writes the race runs for at least (default 4 M) */
	uint64_t race_writes = argc > 1 ? strtoull(argv[1], NULL, 0) : 4000000;

	static const uint64_t sizes[] = {1, 63, 64, 511, 512, 2048, 2049, 100000, 1u << 20};
	bad_input();
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
		model_run(sizes[i], false, sizes[i] > 100000 ? 150 : 400, 0);
		model_run(sizes[i], true, 100, 0);
		model_run(sizes[i], false, sizes[i] > 100000 ? 150 : 400, KD_HIER_RETIRE_SLACK);
	}
	late_run(false);
	late_run(true);
	retire_bound_run();
	race_run(race_writes);
	size_run();
	return check_summary();
}
