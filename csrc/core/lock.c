/*
 * core/lock.c - the VM lock (see core/internal.h for who takes which; the
 * vCPU locks are core/ticket_lock.h's, inline) and the library's clock.
 */
#define _GNU_SOURCE
#include <pthread.h>
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
