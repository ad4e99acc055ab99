/*
 * ab_cpu_time.c - A/B comparison of two libkvmdirty builds in one process,
 * by CPU time (thread CPU time for kd_write and kd_collect, process CPU time
 * for a one-thread writer pool), interleaved round by round so that the
 * machine's load affects both alike. For refactors of the hot paths, on a
 * machine too busy for wall-clock benchmarks. Swap the arguments to check
 * for an order bias.
 *
 *   cc -O2 -std=gnu11 -Icsrc/include bench/c/ab_cpu_time.c -ldl -pthread -o /tmp/ab
 *   /tmp/ab OLD/libkvmdirty.so NEW/libkvmdirty.so
 *
 * Prints per case: the mean over 7 rounds (after one warm-up) of each build
 * and the ratio second/first.
 */
#define _GNU_SOURCE
#include <time.h>

#include "ab_api.h"

static double cpu(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

#define NG 1000000
int main(int argc, char **argv)
{
	api A[2];
	uint64_t npages = 64ull << 18, *g = malloc(NG * 8), *out = malloc(NG * 8 + 64 * 8), x = 7;
	double t[2][5] = {{0}};
	if (argc != 3) {
		printf("usage: %s FIRST/libkvmdirty.so SECOND/libkvmdirty.so\n", argv[0]);
		return 2;
	}
	load(argv[1], &A[0]); load(argv[2], &A[1]);
	for (int i = 0; i < NG; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; g[i] = (x >> 17) % npages; }
	for (int rep = 0; rep < 8; rep++)
		for (int k = 0; k < 2; k++)
			for (uint32_t b = 0; b < 2; b++) {
				struct kd_vm_config cfg = {.backend = b, .nvcpus = 1};
				kd_vm *vm; struct kd_write_result wr; struct kd_collect_result cr;
				A[k].vm_create(&cfg, &vm);
				A[k].region(vm, 0, KD_MEM_LOG_DIRTY_PAGES, 0, npages << 12);
				double c0 = cpu(CLOCK_THREAD_CPUTIME_ID);
				A[k].write(vm, 0, g, NG, 1, &wr);
				double c1 = cpu(CLOCK_THREAD_CPUTIME_ID);
				A[k].collect(vm, 0, 0, npages, out, NG + 64, &cr);
				double c2 = cpu(CLOCK_THREAD_CPUTIME_ID);
				const uint64_t *gl[1] = {g}; uint64_t n[1] = {NG}; kd_writers *ws;
				double p0 = cpu(CLOCK_PROCESS_CPUTIME_ID);
				A[k].ws_start(vm, 1, gl, n, 1, 1, &ws); A[k].ws_join(ws, NULL);
				double p1 = cpu(CLOCK_PROCESS_CPUTIME_ID);
				A[k].collect(vm, 0, 0, npages, out, NG + 64, &cr); /* re-protect */
				double c3 = cpu(CLOCK_THREAD_CPUTIME_ID);
				A[k].collect(vm, 0, 0, npages, out, NG + 64, &cr); /* empty scan */
				double c4 = cpu(CLOCK_THREAD_CPUTIME_ID);
				if (rep) { /* rep 0 warms up */
					t[k][b * 2 + 0] += c1 - c0;
					t[k][b * 2 + 1] += (c2 - c1) + (c4 - c3);
					t[k][4] += p1 - p0;
				}
				A[k].vm_destroy(vm);
			}
	const char *names[5] = {"flat write 1e6 (fault path)", "flat collect (1e6 dirty + empty) 64GiB",
				"twolevel write 1e6", "twolevel collect", "writers pool, 1 thread, both backends"};
	for (int i = 0; i < 5; i++)
		printf("%-42s first %8.2f ms  second %8.2f ms  second/first %.3f\n", names[i], t[0][i] / 7 * 1e3,
		       t[1][i] / 7 * 1e3, t[1][i] / t[0][i]);
	return 0;
}
