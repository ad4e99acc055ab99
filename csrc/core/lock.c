/*
 * core/lock.c - the locks of a VM (see core/internal.h for who takes which)
 * and the library's clock.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include "core/internal.h"

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((struct kd_vm *)0)->lock_storage),
	       "lock storage");

KD_API uint64_t kd_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void kd_vm_lock(kd_vm *vm)
{
	pthread_mutex_lock((pthread_mutex_t *)vm->lock_storage);
}

void kd_vm_unlock(kd_vm *vm)
{
	pthread_mutex_unlock((pthread_mutex_t *)vm->lock_storage);
}

/*
 * Ticket lock: FIFO, so a collector kicking a vCPU is not starved by a writer
 * that re-takes the lock for its next batch at once. lock[0] = next ticket,
 * lock[1] = ticket being served.
 */
void kd_spin_lock(unsigned *lock)
{
	unsigned ticket = __atomic_fetch_add(&lock[0], 1, __ATOMIC_RELAXED);

	while (__atomic_load_n(&lock[1], __ATOMIC_ACQUIRE) != ticket)
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#else
		sched_yield();
#endif
}

void kd_spin_unlock(unsigned *lock)
{
	__atomic_store_n(&lock[1], lock[1] + 1, __ATOMIC_RELEASE);
}
