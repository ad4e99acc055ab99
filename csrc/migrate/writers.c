/*
 * migrate/writers.c - real pthreads acting as vCPUs: thread i runs vCPU i and writes
 * its gfn list through kd_write, in small batches like a guest between exits.
 * On a dirty-ring-full exit it waits, as a vCPU in KVM_RUN would, until the
 * collector resets the ring below its soft limit, then resumes at the gfn
 * after the last one applied. Used by concurrency tests and real-time runs,
 * where the Python GIL must not serialise the writers.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <errno.h>

#include "kvmdirty.h"

#define WRITER_BATCH 32u

struct kd_writer {
	pthread_t thread;
	kd_vm *vm;
	uint32_t vcpu;
	const uint64_t *gfns;
	uint64_t n, loops, value;
	uint64_t applied; /* read after join */
	int error;
	int started;
	int *stop;
};

struct kd_writers {
	uint32_t nthreads;
	int stop;
	struct kd_writer w[];
};

static void wait_for_reset(struct kd_writer *w)
{
	uint32_t used, limit;

	while (!__atomic_load_n(w->stop, __ATOMIC_ACQUIRE)) {
		if (kd_ring_usage(w->vm, w->vcpu, &used, &limit) || used < limit)
			return;
		sched_yield();
	}
}

static void *writer_main(void *arg)
{
	struct kd_writer *w = arg;

	for (uint64_t loop = 0; loop < w->loops; loop++) {
		uint64_t i = 0;
		while (i < w->n && !__atomic_load_n(w->stop, __ATOMIC_RELAXED)) {
			struct kd_write_result res;
			uint64_t k = w->n - i < WRITER_BATCH ? w->n - i : WRITER_BATCH;
			int r = kd_write(w->vm, w->vcpu, w->gfns + i, k, w->value + loop, &res);
			if (r) {
				w->error = r;
				return NULL;
			}
			i += res.applied;
			__atomic_store_n(&w->applied, w->applied + res.applied, __ATOMIC_RELAXED);
			if (res.exit_reason == KD_EXIT_DIRTY_RING_FULL)
				wait_for_reset(w);
		}
		if (__atomic_load_n(w->stop, __ATOMIC_RELAXED))
			break;
	}
	return NULL;
}

KD_API int kd_writers_start(kd_vm *vm, uint32_t nthreads, const uint64_t *const *gfns,
			    const uint64_t *n, uint64_t loops, uint64_t value, kd_writers **out)
{
	struct kd_vm_config cfg;
	kd_writers *ws;

	if (!vm || !out || !n || !gfns || !nthreads || kd_vm_config_get(vm, &cfg) ||
	    nthreads > cfg.nvcpus)
		return -EINVAL;
	for (uint32_t i = 0; i < nthreads; i++)
		if (!gfns[i] && n[i])
			return -EFAULT;
	ws = calloc(1, sizeof(*ws) + nthreads * sizeof(ws->w[0]));
	if (!ws)
		return -ENOMEM;
	ws->nthreads = nthreads;
	for (uint32_t i = 0; i < nthreads; i++) {
		struct kd_writer *w = &ws->w[i];
		w->vm = vm;
		w->vcpu = i;
		w->gfns = gfns[i];
		w->n = n[i];
		w->loops = loops;
		w->value = value;
		w->stop = &ws->stop;
		if (pthread_create(&w->thread, NULL, writer_main, w)) {
			kd_writers_stop(ws);
			kd_writers_join(ws, NULL);
			return -EAGAIN;
		}
		w->started = 1;
	}
	*out = ws;
	return 0;
}

KD_API void kd_writers_stop(kd_writers *ws)
{
	if (ws)
		__atomic_store_n(&ws->stop, 1, __ATOMIC_RELEASE);
}

KD_API int kd_writers_join(kd_writers *ws, uint64_t *applied)
{
	int r = 0;

	if (!ws)
		return -EINVAL;
	for (uint32_t i = 0; i < ws->nthreads; i++) {
		struct kd_writer *w = &ws->w[i];
		if (!w->started)
			continue;
		pthread_join(w->thread, NULL);
		if (applied)
			applied[i] = w->applied;
		if (w->error && !r)
			r = w->error;
	}
	free(ws);
	return r;
}
