/*
 * ab_hier.c - the hier log's collect and write cells on one or more builds
 * of libkvmdirty in one process, builds alternated round by round (this
 * machine's speed swings 2x between minutes; within a round every build
 * sees the same). For changes to csrc/emu/hier*.c: pass the old build
 * first.
 *
 *   make -C csrc BUILD=/tmp/new && cc -O2 -std=gnu11 -Icsrc/include \
 *       bench/c/ab_hier.c -ldl -pthread -o /tmp/ab_hier
 *   /tmp/ab_hier /tmp/old/libkvmdirty.so /tmp/new/libkvmdirty.so
 *   POLLUTE=1 /tmp/ab_hier ...   (16 MiB streamed between write and collect:
 *                                 the collect runs with cold caches)
 *
 * Collect cells: median µs of one kd_collect_slots over every slot after
 * 1,000 scattered pages are dirtied (the same pages every round, or fresh
 * ones: "fresh", where the previous round's blocks are given back): 1 GiB,
 * 4 GiB, 512 GiB, 24 TiB (4 x 6 TiB), and the 1 GiB cell's pages in the
 * 24 TiB guest ("same"). Write cells: the median over rounds of hier's
 * time / flat's for 2^20 random gfns at 1, 64 and 512 GiB.
 */
#define _GNU_SOURCE
#include <string.h>

#include "ab_api.h"
#include "bench_util.h"

#define GIB_PAGES (1ull << 18)
#define DIRTY 1000
#define COLLECT_ROUNDS 101
#define WRITE_ROUNDS 15
#define WRITE_GFNS (1u << 20)
#define MAX_BUILDS 8

static void random_pages(uint64_t *g, unsigned n, uint64_t span)
{
	for (unsigned i = 0; i < n; i++)
		g[i] = next_random() % span;
	qsort(g, n, sizeof(*g), cmp_u64);
}

static kd_vm *make_vm(const api *a, uint32_t backend, uint64_t npages, unsigned nslots)
{
	struct kd_vm_config cfg = {.backend = backend, .nvcpus = 1};
	uint64_t per = npages / nslots;
	kd_vm *vm;

	if (a->vm_create(&cfg, &vm)) {
		printf("kd_vm_create failed\n");
		exit(1);
	}
	for (unsigned s = 0; s < nslots; s++)
		if (a->region(vm, s, KD_MEM_LOG_DIRTY_PAGES, s * per << 12, per << 12)) {
			printf("kd_set_user_memory_region failed\n");
			exit(1);
		}
	return vm;
}

static const struct cell {
	const char *name;
	uint64_t gib, span_gib;
	unsigned slots;
	int fresh;
} cells[] = {
	{"1G", 1, 1, 1, 0}, {"4G", 4, 4, 1, 0}, {"512G", 512, 512, 1, 0},
	{"24T", 24576, 24576, 4, 0}, {"24T-same", 24576, 1, 4, 0},
	{"1G-fresh", 1, 1, 1, 1}, {"24T-fresh", 24576, 24576, 4, 1},
};
#define NCELLS (sizeof(cells) / sizeof(*cells))

int main(int argc, char **argv)
{
	static char junk[16 << 20];
	static double t[MAX_BUILDS][COLLECT_ROUNDS], med[MAX_BUILDS][NCELLS];
	const int nb = argc - 1, pollute = getenv("POLLUTE") != NULL;
	static const uint32_t ids[4] = {0, 1, 2, 3};
	uint64_t *g = malloc(WRITE_GFNS * 8), *out = malloc((WRITE_GFNS + 512) * 8);
	api A[MAX_BUILDS];

	if (nb < 1 || nb > MAX_BUILDS) {
		printf("usage: %s BUILD/libkvmdirty.so ... (1 to %d)\n", argv[0], MAX_BUILDS);
		return 2;
	}
	for (int b = 0; b < nb; b++)
		load(argv[b + 1], &A[b]);
	for (unsigned c = 0; c < NCELLS; c++) {
		kd_vm *vm[MAX_BUILDS];
		for (int b = 0; b < nb; b++)
			vm[b] = make_vm(&A[b], KD_BACKEND_HIER, cells[c].gib * GIB_PAGES, cells[c].slots);
		random_pages(g, DIRTY, cells[c].span_gib * GIB_PAGES);
		for (int r = -3; r < COLLECT_ROUNDS; r++) {
			if (cells[c].fresh)
				random_pages(g, DIRTY, cells[c].span_gib * GIB_PAGES);
			for (int b = 0; b < nb; b++) {
				struct kd_write_result wr;
				struct kd_collect_slots_result res;
				uint64_t t0;
				A[b].write(vm[b], 0, g, DIRTY, 0, &wr);
				for (int z = 0; pollute && z < (int)sizeof(junk); z += 64)
					junk[z]++;
				t0 = A[b].clock_ns();
				A[b].collect_slots(vm[b], ids, cells[c].slots, 0, 0, out, DIRTY + 64, &res);
				if (r >= 0)
					t[b][r] = (double)(A[b].clock_ns() - t0) / 1e3;
			}
		}
		for (int b = 0; b < nb; b++) {
			med[b][c] = median(t[b], COLLECT_ROUNDS);
			A[b].vm_destroy(vm[b]);
		}
	}
	for (int b = 0; b < nb; b++) {
		printf("%s\n  collect µs:", argv[b + 1]);
		for (unsigned c = 0; c < NCELLS; c++)
			printf(" %s %.1f", cells[c].name, med[b][c]);
		printf("\n  24T/1G %.2f, same/1G %.2f, fresh 24T/1G %.2f\n", med[b][3] / med[b][0],
		       med[b][4] / med[b][0], med[b][6] / med[b][5]);
	}
	for (uint64_t gib = 1; gib <= 512; gib *= gib == 1 ? 64 : 8) {
		kd_vm *vm[MAX_BUILDS][2];
		for (uint64_t i = 0; i < WRITE_GFNS; i++)
			g[i] = next_random() % (gib * GIB_PAGES);
		for (int b = 0; b < nb; b++)
			for (int k = 0; k < 2; k++)
				vm[b][k] = make_vm(&A[b], k ? KD_BACKEND_HIER : KD_BACKEND_FLAT,
						   gib * GIB_PAGES, 1);
		for (int r = 0; r < WRITE_ROUNDS; r++)
			for (int b = 0; b < nb; b++) {
				double ns[2];
				for (int k = 0; k < 2; k++) {
					struct kd_collect_result cr;
					struct kd_write_result wr;
					uint64_t pos = 0, t0;
					do { /* re-protect: every write faults again */
						A[b].collect(vm[b][k], 0, pos, gib * GIB_PAGES - pos, out,
							     WRITE_GFNS + 512, &cr);
						pos = cr.resume_page;
					} while (pos < gib * GIB_PAGES);
					t0 = A[b].clock_ns();
					A[b].write(vm[b][k], 0, g, WRITE_GFNS, 0, &wr);
					ns[k] = (double)(A[b].clock_ns() - t0);
				}
				t[b][r] = ns[1] / ns[0];
			}
		for (int b = 0; b < nb; b++) {
			printf("%4llu GiB write hier/flat %.2f  %s\n", (unsigned long long)gib,
			       median(t[b], WRITE_ROUNDS), argv[b + 1]);
			A[b].vm_destroy(vm[b][0]);
			A[b].vm_destroy(vm[b][1]);
		}
	}
	return 0;
}
