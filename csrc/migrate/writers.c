/*
 * migrate/writers.c - real pthreads acting as vCPUs: thread i runs vCPU i
 * and writes its gfn list through kd_write, `loops` times, in small batches
 * like a guest between exits.
 * Ring-full exits are waited out by the vCPU pool (vcpu_pool.h). Used by
 * concurrency tests and real-time runs, where the Python GIL must not
 * serialise the writers.
 */
#include <errno.h>
#include <stdlib.h>

#include "vcpu_pool.h"

#define WRITER_BATCH 32u

struct kd_writer {
	struct kd_writers *ws;
	uint32_t vcpu;
	const uint64_t *gfns;
	uint64_t n, loops, value;
	uint64_t applied; /* relaxed atomic; final after join */
	int error;
};

struct kd_writers {
	struct kd_vcpu_pool pool;
	uint32_t nthreads;
	struct kd_writer w[];
};

static void *writer_main(void *arg)
{
	struct kd_writer *w = arg;

	for (uint64_t loop = 0; loop < w->loops; loop++) {
		int r = kd_vcpu_pool_write(&w->ws->pool, w->vcpu, w->gfns, w->n, w->value + loop,
					   WRITER_BATCH, &w->applied, NULL);
		if (r < 0)
			w->error = r;
		if (r)
			break;
	}
	return NULL;
}

KD_API int kd_writers_start(kd_vm *vm, uint32_t nthreads, const uint64_t *const *gfns,
			    const uint64_t *n, uint64_t loops, uint64_t value, kd_writers **out)
{
	struct kd_vm_config cfg;
	kd_writers *ws;
	int r;

	if (!vm || !out || !n || !gfns || !nthreads || kd_vm_config_get(vm, &cfg) ||
	    nthreads > cfg.nvcpus)
		return -EINVAL;
	for (uint32_t i = 0; i < nthreads; i++)
		if (!gfns[i] && n[i])
			return -EFAULT;
	ws = calloc(1, sizeof(*ws) + nthreads * sizeof(ws->w[0]));
	if (!ws)
		return -ENOMEM;
	r = kd_vcpu_pool_init(&ws->pool, vm, nthreads);
	if (r) {
		free(ws);
		return r;
	}
	ws->nthreads = nthreads;
	for (uint32_t i = 0; i < nthreads; i++) {
		struct kd_writer *w = &ws->w[i];
		w->ws = ws;
		w->vcpu = i;
		w->gfns = gfns[i];
		w->n = n[i];
		w->loops = loops;
		w->value = value;
		r = kd_vcpu_pool_spawn(&ws->pool, i, writer_main, w);
		if (r) {
			kd_writers_stop(ws);
			kd_writers_join(ws, NULL);
			return r;
		}
	}
	*out = ws;
	return 0;
}

KD_API void kd_writers_stop(kd_writers *ws)
{
	if (ws)
		kd_vcpu_pool_stop(&ws->pool);
}

/* kd_vcpu_pool_join is idempotent: kd_writers_join after it only collects. */
KD_API int kd_writers_wait(kd_writers *ws)
{
	if (!ws)
		return -EINVAL;
	kd_vcpu_pool_join(&ws->pool);
	return 0;
}

KD_API int kd_writers_join(kd_writers *ws, uint64_t *applied)
{
	int r = 0;

	if (!ws)
		return -EINVAL;
	kd_vcpu_pool_join(&ws->pool);
	for (uint32_t i = 0; i < ws->nthreads; i++) {
		if (applied)
			applied[i] = ws->w[i].applied;
		if (ws->w[i].error && !r)
			r = ws->w[i].error;
	}
	free(ws);
	return r;
}
