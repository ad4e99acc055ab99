/*
 * core/ring_fetch.h - the user side of KVM's dirty-ring ABI
 * (Documentation/virt/kvm/api.rst, KVM_CAP_DIRTY_LOG_RING_ACQ_REL), once for
 * both rings that speak it: the emulated one (emu/ring_backend.c) and the
 * kernel's (real/kvm/kvm_dirty.c). A leaf: the public struct kd_dirty_gfn
 * only, so the kvm module still builds alone.
 *
 * From the fetch index on, take every entry whose flags are DIRTY: load-acquire
 * the flags (pairs with the producer's store-release after slot and offset),
 * copy the entry, store-release RESET (our reads happen before the producer
 * may reuse it), advance. The caller serialises harvests of one ring (vm->lock
 * for the emulated ring, the vCPU's ring_lock for the kernel's).
 */
#ifndef KD_RING_FETCH_H
#define KD_RING_FETCH_H

#include <stdint.h>

#include "kvmdirty/vm.h"

/* Harvest up to cap entries of ring (size entries, a power of two) into
 * out, advancing *fetch; returns how many. */
static inline uint64_t kd_ring_fetch_entries(struct kd_dirty_gfn *ring, uint32_t size,
					     uint32_t *fetch, struct kd_dirty_gfn *out,
					     uint64_t cap)
{
	uint64_t n = 0;

	while (n < cap) {
		struct kd_dirty_gfn *e = &ring[*fetch & (size - 1)];
		if (__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) != KD_DIRTY_GFN_F_DIRTY)
			break;
		out[n].flags = KD_DIRTY_GFN_F_DIRTY;
		out[n].slot = e->slot;
		out[n].offset = e->offset;
		__atomic_store_n(&e->flags, KD_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		(*fetch)++;
		n++;
	}
	return n;
}

#endif /* KD_RING_FETCH_H */
