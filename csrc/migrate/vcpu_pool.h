/*
 * migrate/vcpu_pool.h - one pool of pthreads acting as vCPUs, used by the
 * writer threads (writers.c) and the real-time workload threads
 * (workload.c); internal, not installed.
 *
 * Thread i runs vCPU i (one thread per vCPU, as KVM serialises KVM_RUN).
 * A guest entry that ends with a dirty-ring-full exit waits, as a vCPU in
 * KVM_RUN would, until the collector resets the ring below its soft limit
 * (or the pool stops), then resumes at the gfn after the last one applied.
 * While a pool runs it holds the VM (kd_vm_hold): memslot changes, which
 * would free memory under its writes, fail with -EBUSY until it is joined.
 */
#ifndef KD_VCPU_POOL_H
#define KD_VCPU_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvmdirty.h"

struct kd_vcpu_pool {
	kd_vm *vm;
	uint32_t nthreads;
	int stop;              /* set once by kd_vcpu_pool_stop; threads poll it */
	int held;              /* the pool holds the VM */
	pthread_t *tid;
	unsigned char *started;
};

/* Check nthreads (1..nvcpus of vm) and allocate; holds the VM.
 * -EINVAL, -EBUSY (kd_vm_hold), -ENOMEM. */
int kd_vcpu_pool_init(struct kd_vcpu_pool *p, kd_vm *vm, uint32_t nthreads);
/* Start body(arg) as the thread of vCPU vcpu. -EAGAIN if it cannot. */
int kd_vcpu_pool_spawn(struct kd_vcpu_pool *p, uint32_t vcpu,
		       void *(*body)(void *), void *arg);
static inline bool kd_vcpu_pool_stopping(const struct kd_vcpu_pool *p)
{
	return __atomic_load_n(&p->stop, __ATOMIC_RELAXED);
}
void kd_vcpu_pool_stop(struct kd_vcpu_pool *p);
/* Wait for every started thread, release the VM, free the pool's arrays. */
void kd_vcpu_pool_join(struct kd_vcpu_pool *p);

/*
 * Write gfns[0..n) on vcpu in guest entries of at most `batch` gfns
 * (0: all at once), waiting out ring-full exits. *applied grows as entries
 * apply (relaxed atomic stores: another thread may read it), *ring_waits
 * counts the waits (may be NULL). Returns 0 when all are written, 1 if the
 * pool stopped first, or kd_write's negative errno.
 */
int kd_vcpu_pool_write(struct kd_vcpu_pool *p, uint32_t vcpu,
		       const uint64_t *gfns, uint64_t n, uint64_t value,
		       uint64_t batch, uint64_t *applied, uint64_t *ring_waits);

#endif /* KD_VCPU_POOL_H */
