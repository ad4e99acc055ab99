/*
 * core/ticket_lock.h - the library's spin lock: a ticket lock, FIFO, so a
 * collector kicking a vCPU is not starved by a writer that re-takes the lock
 * for its next batch at once. lock[0] = next ticket, lock[1] = ticket being
 * served. Taken by a vCPU's writer and its kicker (struct kd_vcpu, see
 * core/internal.h) and by the hier log's fault path (emu/hier_log.h). A
 * leaf: inline, no other header of the library.
 */
#ifndef KD_TICKET_LOCK_H
#define KD_TICKET_LOCK_H

#include <sched.h>

static inline void kd_spin_lock(unsigned *lock)
{
	unsigned ticket = __atomic_fetch_add(&lock[0], 1, __ATOMIC_RELAXED);

	while (__atomic_load_n(&lock[1], __ATOMIC_ACQUIRE) != ticket)
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#else
		sched_yield();
#endif
}

static inline void kd_spin_unlock(unsigned *lock)
{
	__atomic_store_n(&lock[1], lock[1] + 1, __ATOMIC_RELEASE);
}

#endif /* KD_TICKET_LOCK_H */
