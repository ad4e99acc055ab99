/*
 * migrate/vcpu_pool.c - the vCPU thread pool (vcpu_pool.h): threads, the
 * guest-entry loop, and the wait for a ring reset.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vcpu_pool.h"

int kd_vcpu_pool_init(struct kd_vcpu_pool *p, kd_vm *vm, uint32_t nthreads)
{
	struct kd_vm_config cfg;
	int r;

	memset(p, 0, sizeof(*p));
	if (!vm || !nthreads || kd_vm_config_get(vm, &cfg) || nthreads > cfg.nvcpus)
		return -EINVAL;
	p->tid = calloc(nthreads, sizeof(*p->tid));
	p->started = calloc(nthreads, 1);
	if (!p->tid || !p->started) {
		free(p->tid);
		free(p->started);
		return -ENOMEM;
	}
	r = kd_vm_hold(vm);
	if (r) {
		free(p->tid);
		free(p->started);
		return r;
	}
	p->vm = vm;
	p->nthreads = nthreads;
	p->held = 1;
	return 0;
}

int kd_vcpu_pool_spawn(struct kd_vcpu_pool *p, uint32_t vcpu, void *(*body)(void *), void *arg)
{
	if (vcpu >= p->nthreads || p->started[vcpu])
		return -EINVAL;
	if (pthread_create(&p->tid[vcpu], NULL, body, arg))
		return -EAGAIN;
	p->started[vcpu] = 1;
	return 0;
}

void kd_vcpu_pool_stop(struct kd_vcpu_pool *p)
{
	__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
}

void kd_vcpu_pool_join(struct kd_vcpu_pool *p)
{
	for (uint32_t i = 0; i < p->nthreads; i++)
		if (p->started[i])
			pthread_join(p->tid[i], NULL);
	if (p->held)
		kd_vm_release(p->vm);
	free(p->tid);
	free(p->started);
	p->tid = NULL;
	p->started = NULL;
	p->held = 0;
	p->nthreads = 0;
}

/* The ring is full: wait until the collector resets it below the soft
 * limit. Yield first (a collector on another core resets within
 * microseconds), then sleep in 20 us steps so a waiting vCPU does not take
 * a core from the collector. Returns true if the pool stopped. */
static bool wait_for_reset(struct kd_vcpu_pool *p, uint32_t vcpu)
{
	for (unsigned spins = 0; !kd_vcpu_pool_stopping(p); spins++) {
		uint32_t used, limit;
		if (kd_ring_usage(p->vm, vcpu, &used, &limit) || used < limit)
			return false;
		if (spins < 64) {
			sched_yield();
		} else {
			struct timespec ts = {0, 20000};
			nanosleep(&ts, NULL);
		}
	}
	return true;
}

int kd_vcpu_pool_write(struct kd_vcpu_pool *p, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		       uint64_t value, uint64_t batch, uint64_t *applied, uint64_t *ring_waits)
{
	uint64_t i = 0;

	while (i < n) {
		struct kd_write_result res;
		uint64_t k = batch && n - i > batch ? batch : n - i;
		int r;

		if (kd_vcpu_pool_stopping(p))
			return 1;
		r = kd_write(p->vm, vcpu, gfns + i, k, value, &res);
		if (r)
			return r;
		i += res.applied;
		__atomic_store_n(applied, *applied + res.applied, __ATOMIC_RELAXED);
		if (res.exit_reason == KD_EXIT_DIRTY_RING_FULL) {
			if (ring_waits)
				++*ring_waits;
			if (wait_for_reset(p, vcpu))
				return 1;
		}
	}
	return 0;
}
