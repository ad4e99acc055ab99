/*
 * test_concurrent_api.c - calls the header allows while vCPU threads run:
 *
 *  1. kd_stats_reset while a writer thread runs kd_write: after a reset the
 *     writer-side counters count only writes published after it (a reset
 *     that stored zeros could be overwritten by the writer's load + add +
 *     store, bringing back the old total);
 *  2. memslot changes while a writer pool or workload threads of the VM run
 *     (they would free memory under the writes): -EBUSY, nothing changes;
 *     after join/stop they succeed. kd_vm_hold/kd_vm_release directly.
 *
 * Build (tests/test_c_library.py does):
 *   cc -std=gnu11 -O2 test_concurrent_api.c $(pykvmdirty-config --cflags --libs)
 * Prints "N passed, 0 failed" and exits 0, or lists each failure.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"

#include "check.h"


#define SLOT_PAGES 4096u

static kd_vm *make_vm(uint32_t nvcpus)
{
	struct kd_vm_config cfg = {.backend = KD_BACKEND_FLAT, .nvcpus = nvcpus};
	kd_vm *vm = NULL;

	if (kd_vm_create(&cfg, &vm) ||
	    kd_set_user_memory_region(vm, 0, KD_MEM_LOG_DIRTY_PAGES, 0,
				      (uint64_t)SLOT_PAGES << KD_PAGE_SHIFT)) {
		printf("cannot create a VM\n");
		exit(1);
	}
	return vm;
}

/* ---- 1. stats reset against a running writer ---- */

struct writer {
	kd_vm *vm;
	uint64_t done; /* kd_write calls completed (atomic) */
	int stop;
	int error;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint64_t gfn = 0;

	while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
		struct kd_write_result res;
		int r = kd_write(w->vm, 0, &gfn, 1, 0, &res);
		if (r) {
			w->error = r;
			break;
		}
		gfn = (gfn + 1) % SLOT_PAGES;
		__atomic_fetch_add(&w->done, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

static void test_stats_reset_while_writing(void)
{
	struct writer w = {.vm = make_vm(1)};
	uint64_t bad = 0, worst = 0, rounds = 20000;
	pthread_t t;

	pthread_create(&t, NULL, writer_main, &w);
	while (__atomic_load_n(&w.done, __ATOMIC_SEQ_CST) < 1000)
		;
	for (uint64_t i = 0; i < rounds; i++) {
		struct kd_stats st;
		uint64_t before = __atomic_load_n(&w.done, __ATOMIC_SEQ_CST), after;
		kd_stats_reset(w.vm);
		kd_stats_get(w.vm, &st);
		after = __atomic_load_n(&w.done, __ATOMIC_SEQ_CST);
		/* counted: writes published after the reset read the counter;
		 * each was counted in `done` after `before`, but for at most
		 * one whose done++ comes after `after` */
		if (st.writes > after - before + 1) {
			bad++;
			if (st.writes - (after - before) > worst)
				worst = st.writes - (after - before);
		}
	}
	__atomic_store_n(&w.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	CHECK(!w.error, "writer error %d", w.error);
	CHECK(bad == 0, "stats reset lost in %llu of %llu rounds (up to %llu writes too many)",
	      (unsigned long long)bad, (unsigned long long)rounds, (unsigned long long)worst);
	{
		/* quiet VM: reset then one write is exactly one */
		struct kd_stats st;
		struct kd_write_result res;
		uint64_t gfn = 7;
		kd_stats_reset(w.vm);
		kd_write(w.vm, 0, &gfn, 1, 0, &res);
		kd_stats_get(w.vm, &st);
		CHECK(st.writes == 1, "writes after reset + 1 write: %llu",
		      (unsigned long long)st.writes);
	}
	kd_vm_destroy(w.vm);
}

/* ---- 2. memslots frozen while vCPU threads run ---- */

static void check_memslots_refused(kd_vm *vm, const char *who)
{
	struct kd_slot_info info;
	uint64_t size = (uint64_t)SLOT_PAGES << KD_PAGE_SHIFT;

	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, 0) == -EBUSY, "%s: delete not EBUSY", who);
	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, size) == -EBUSY,
	      "%s: log toggle not EBUSY", who);
	CHECK(kd_set_user_memory_region(vm, 0, KD_MEM_LOG_DIRTY_PAGES, size, size) == -EBUSY,
	      "%s: move not EBUSY", who);
	CHECK(kd_set_user_memory_region(vm, 1, 0, 1ull << 30, size) == -EBUSY,
	      "%s: create not EBUSY", who);
	/* before any other check, as documented */
	CHECK(kd_set_user_memory_region(vm, 0, 0x80, 1, 1) == -EBUSY,
	      "%s: bad arguments not EBUSY", who);
	CHECK(kd_slot_info(vm, 0, &info) == 0 && info.flags == KD_MEM_LOG_DIRTY_PAGES &&
		      info.base_gfn == 0 && info.npages == SLOT_PAGES,
	      "%s: slot 0 changed", who);
	CHECK(kd_slot_info(vm, 1, &info) == -ENOENT, "%s: slot 1 created", who);
}

static void test_memslots_busy_while_writers_run(void)
{
	kd_vm *vm = make_vm(2);
	uint64_t *g[2], n[2] = {SLOT_PAGES, SLOT_PAGES}, applied[2];
	kd_writers *ws = NULL;
	int r;

	for (int i = 0; i < 2; i++) {
		g[i] = malloc(SLOT_PAGES * sizeof(uint64_t));
		for (uint64_t p = 0; p < SLOT_PAGES; p++)
			g[i][p] = p;
	}
	r = kd_writers_start(vm, 2, (const uint64_t *const *)g, n, 1ull << 40, 1, &ws);
	CHECK(r == 0, "writers_start %d", r);
	if (!r) {
		check_memslots_refused(vm, "writers");
		kd_writers_stop(ws);
		r = kd_writers_join(ws, applied);
		CHECK(r == 0, "writers_join %d", r);
	}
	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, 0) == 0, "delete after join");
	for (int i = 0; i < 2; i++)
		free(g[i]);
	kd_vm_destroy(vm);
}

static void test_memslots_busy_while_workload_threads_run(void)
{
	kd_vm *vm = make_vm(2);
	struct kd_workload_config wc = {.kind = KD_WL_UNIFORM, .seed = 1, .npages = SLOT_PAGES};
	struct kd_workload_thread_stats st[2];
	kd_workload *wl[2] = {NULL, NULL};
	kd_workload_threads *t = NULL;
	int r;

	kd_workload_create(&wc, &wl[0]);
	kd_workload_create(&wc, &wl[1]);
	r = kd_workload_threads_start(vm, wl, 2, 0, 1, &t);
	CHECK(r == 0, "workload_threads_start %d", r);
	if (!r) {
		struct timespec ts = {0, 20 * 1000 * 1000};
		check_memslots_refused(vm, "workload threads");
		nanosleep(&ts, NULL); /* let them write */
		r = kd_workload_threads_stop(t, st, 2);
		CHECK(r == 0, "workload_threads_stop %d", r);
		CHECK(st[0].writes > 0 || st[1].writes > 0, "workload threads wrote nothing");
	}
	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, 0) == 0, "delete after stop");
	kd_workload_destroy(wl[0]);
	kd_workload_destroy(wl[1]);
	kd_vm_destroy(vm);
}

static void test_hold_release(void)
{
	kd_vm *vm = make_vm(1);

	CHECK(kd_vm_hold(NULL) == -EINVAL && kd_vm_release(NULL) == -EINVAL, "NULL vm");
	CHECK(kd_vm_release(vm) == -EINVAL, "release without hold");
	CHECK(kd_vm_hold(vm) == 0 && kd_vm_hold(vm) == 0, "hold twice");
	check_memslots_refused(vm, "held twice");
	CHECK(kd_vm_release(vm) == 0, "release 1");
	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, 0) == -EBUSY, "still held once");
	CHECK(kd_vm_release(vm) == 0, "release 2");
	CHECK(kd_set_user_memory_region(vm, 0, 0, 0, 0) == 0, "delete after release");
	kd_vm_destroy(vm);
}

int main(void)
{
	test_stats_reset_while_writing();
	test_memslots_busy_while_writers_run();
	test_memslots_busy_while_workload_threads_run();
	test_hold_release();
	return check_summary();
}
