/*
 * two_writers.c - libkvmdirty from C: a VM per backend (flat, two-level),
 * one logged slot, two vCPU threads writing pages while this thread collects,
 * then a final collect; prints what each backend found and how long its
 * collects took. Both must report the same pages.
 *
 * Build:  cc -O2 two_writers.c $(pykvmdirty-config --cflags --libs) -o two_writers
 * Run:    ./two_writers [slot_pages] [gfns_per_thread] [seed]
 * Output: a header line naming the columns (starting with '#', like the first
 * line), then one line per backend: backend, pages found, sum of their gfns,
 * collects, mean µs per collect while the threads wrote.
 *
 * gfns are drawn with splitmix64 (seed, seed + 1 for the second thread), so a
 * program in another language can reproduce the same input.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define CHECK(call)                                                                     \
	do {                                                                            \
		int rc_ = (call);                                                       \
		if (rc_ < 0) {                                                          \
			fprintf(stderr, "%s failed: %s\n", #call, strerror(-rc_));      \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

int main(int argc, char **argv)
{
	uint64_t npages = argc > 1 ? strtoull(argv[1], NULL, 0) : 1ull << 20;
	uint64_t per_thread = argc > 2 ? strtoull(argv[2], NULL, 0) : 100000;
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 1;
	const uint32_t backends[] = {KD_BACKEND_FLAT, KD_BACKEND_TWOLEVEL};
	uint64_t *gfns[2], *out = (uint64_t *)malloc(npages * sizeof(uint64_t));
	uint8_t *seen = (uint8_t *)calloc(npages, 1);

	if (!out || !seen)
		return 1;
	for (int t = 0; t < 2; t++) {
		uint64_t state = seed + (uint64_t)t;
		gfns[t] = (uint64_t *)malloc(per_thread * sizeof(uint64_t));
		for (uint64_t i = 0; i < per_thread; i++)
			gfns[t][i] = splitmix64(&state) % npages;
	}
	printf("# libkvmdirty %s, %" PRIu64 " pages, 2 threads x %" PRIu64 " writes\n",
	       kd_version(), npages, per_thread);
	printf("# %-10s %12s %16s %9s %14s\n", "backend", "pages_found", "gfn_sum", "collects",
	       "us_per_collect");
	for (size_t b = 0; b < sizeof(backends) / sizeof(*backends); b++) {
		struct kd_vm_config cfg;
		struct kd_collect_result res;
		uint64_t found = 0, sum = 0, collects = 0, ns = 0, n[2] = {per_thread, per_thread};
		uint64_t applied[2];
		kd_writers *w;
		kd_vm *vm;

		memset(seen, 0, npages);
		memset(&cfg, 0, sizeof(cfg));
		cfg.backend = backends[b];
		cfg.nvcpus = 2;
		CHECK(kd_vm_create(&cfg, &vm));
		CHECK(kd_set_user_memory_region(vm, 0, KD_MEM_LOG_DIRTY_PAGES, 0,
						npages << KD_PAGE_SHIFT));
		CHECK(kd_writers_start(vm, 2, (const uint64_t *const *)gfns, n, 1, 1, &w));
		for (int round = 0; round < 50; round++) { /* collect while they write */
			uint64_t t0 = now_ns();
			CHECK(kd_collect(vm, 0, 0, npages, out, npages, &res));
			ns += now_ns() - t0;
			collects++;
			for (uint64_t i = 0; i < res.count; i++)
				seen[out[i]] = 1;
		}
		CHECK(kd_writers_join(w, applied));
		CHECK(kd_collect(vm, 0, 0, npages, out, npages, &res));
		collects++;
		for (uint64_t i = 0; i < res.count; i++)
			seen[out[i]] = 1;
		for (uint64_t p = 0; p < npages; p++)
			if (seen[p]) {
				found++;
				sum += p;
			}
		printf("  %-10s %12" PRIu64 " %16" PRIu64 " %9" PRIu64 " %14.1f\n",
		       kd_backend_name(backends[b]), found, sum, collects,
		       ns / 1e3 / (double)(collects - 1));
		kd_vm_destroy(vm);
	}
	free(gfns[0]);
	free(gfns[1]);
	free(out);
	free(seen);
	return 0;
}
