/*
 * emu/dirty_ring.h - the emulated per-vCPU dirty ring as a ring buffer
 * (emu/dirty_ring.c; struct kd_ring in core/internal.h), the kernel's side
 * of it, as Linux's virt/kvm/dirty_ring.c: a leaf the write path pushes
 * into and the ring backend (emu/ring_backend.c) sizes, resets and reads.
 * The user side (harvest) is core/ring_fetch.h.
 *
 * Each entry cycles through one state machine:
 *
 *   flags 0 --push (vCPU, on a write fault)--> DIRTY
 *   DIRTY --harvest (user: load-acquire flags, read, store-release RESET)--> RESET
 *   RESET --reset (KVM_RESET_DIRTY_RINGS: re-protect, zero)--> 0
 *
 * Indices grow without bound and are masked by size - 1:
 *   reset_index <= fetch_index <= dirty_index, dirty_index - reset_index <= size
 * The producer fills entry dirty_index (its flags are 0: used < size) writing
 * slot and offset before the store-release of DIRTY. Used entries
 * (dirty_index - reset_index) reaching soft_limit = size - 64 (- 512 with PML)
 * makes the vCPU exit with KVM_EXIT_DIRTY_RING_FULL and refuse to run until a
 * reset brings it below; the reserve absorbs a PML drain.
 * Producer state belongs to the vCPU (under vcpu->lock); fetch_index to the
 * harvester and reset_index to the reset, both under vm->lock.
 */
#ifndef KD_DIRTY_RING_H
#define KD_DIRTY_RING_H

#include "core/internal.h"

/* KVM's checks of a ring size (entries): 0, -EINVAL or -E2BIG. */
int kd_ring_check_size(uint32_t entries, bool pml);
/* A ring of `entries` entries, all free; destroy gives its memory back. */
int kd_ring_init(struct kd_ring *r, uint32_t entries, bool pml);
void kd_ring_destroy(struct kd_ring *r);
/* KVM_RESET_DIRTY_RINGS for one ring: recycle the harvested entries,
 * re-protecting their pages; returns the entries recycled. Under vm->lock. */
uint64_t kd_ring_reset(kd_vm *vm, struct kd_ring *r);

/* Entries pushed and not yet reset (any thread: atomic loads). */
static inline uint32_t kd_ring_used(const struct kd_ring *r)
{
	return __atomic_load_n(&r->dirty_index, __ATOMIC_ACQUIRE) -
	       __atomic_load_n(&r->reset_index, __ATOMIC_ACQUIRE);
}

/* Producer side, under vcpu->lock. */
static inline bool kd_ring_soft_full(const struct kd_ring *r)
{
	uint32_t used = __atomic_load_n(&r->dirty_index, __ATOMIC_RELAXED) -
			__atomic_load_n(&r->reset_index, __ATOMIC_ACQUIRE);
	return used >= r->soft_limit;
}

static inline void kd_ring_push(struct kd_ring *r, uint32_t slot, uint64_t offset)
{
	struct kd_dirty_gfn *e = &r->entries[r->dirty_index & (r->size - 1)];

	e->slot = slot;
	e->offset = offset;
	__atomic_store_n(&e->flags, KD_DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
	__atomic_store_n(&r->dirty_index, r->dirty_index + 1, __ATOMIC_RELEASE);
}

#endif /* KD_DIRTY_RING_H */
