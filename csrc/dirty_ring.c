/*
 * dirty_ring.c - per-vCPU dirty rings with KVM's semantics
 * (virt/kvm/dirty_ring.c, Documentation/virt/kvm/api.rst, KVM_CAP_DIRTY_LOG_RING_ACQ_REL).
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
#include <stdlib.h>

#include "internal.h"

int kd_ring_check_size(uint32_t entries, bool pml)
{
	/* KVM checks the size in bytes: power of two, >= the reserved entries
	 * and >= one page (EINVAL), <= 65536 entries (E2BIG). */
	uint64_t bytes = (uint64_t)entries * sizeof(struct kd_dirty_gfn);
	uint64_t rsvd = KD_RING_RESERVED_ENTRIES + (pml ? KD_PML_ENTRIES : 0);

	if (!entries || (entries & (entries - 1)))
		return -EINVAL;
	if (bytes < rsvd * sizeof(struct kd_dirty_gfn) || bytes < KD_PAGE_SIZE)
		return -EINVAL;
	if (entries > KD_RING_MAX_ENTRIES)
		return -E2BIG;
	return 0;
}

int kd_ring_init(struct kd_ring *r, uint32_t entries, bool pml)
{
	memset(r, 0, sizeof(*r));
	r->entries = kd_pages_alloc((uint64_t)entries * sizeof(*r->entries), true);
	if (!r->entries)
		return -ENOMEM;
	r->size = entries;
	r->soft_limit = entries - KD_RING_RESERVED_ENTRIES - (pml ? KD_PML_ENTRIES : 0);
	return 0;
}

void kd_ring_destroy(struct kd_ring *r)
{
	kd_pages_free(r->entries, (uint64_t)r->size * sizeof(*r->entries));
	memset(r, 0, sizeof(*r));
}

bool kd_ring_soft_full(const struct kd_ring *r)
{
	uint32_t used = __atomic_load_n(&r->dirty_index, __ATOMIC_RELAXED) -
			__atomic_load_n(&r->reset_index, __ATOMIC_ACQUIRE);
	return used >= r->soft_limit;
}

void kd_ring_push(struct kd_ring *r, uint32_t slot, uint64_t offset)
{
	struct kd_dirty_gfn *e = &r->entries[r->dirty_index & (r->size - 1)];

	e->slot = slot;
	e->offset = offset;
	__atomic_store_n(&e->flags, KD_DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
	__atomic_store_n(&r->dirty_index, r->dirty_index + 1, __ATOMIC_RELEASE);
}

uint64_t kd_ring_harvest_one(struct kd_ring *r, struct kd_dirty_gfn *out, uint64_t cap)
{
	uint64_t n = 0;

	while (n < cap) {
		struct kd_dirty_gfn *e = &r->entries[r->fetch_index & (r->size - 1)];
		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KD_DIRTY_GFN_F_DIRTY))
			break;
		out[n].flags = KD_DIRTY_GFN_F_DIRTY;
		out[n].slot = e->slot;
		out[n].offset = e->offset;
		__atomic_store_n(&e->flags, KD_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		r->fetch_index++;
		n++;
	}
	return n;
}

/* Re-protect `mask` (pages offset..offset+63) of slot `id`, if still there. */
static uint64_t reprotect_mask(kd_vm *vm, uint32_t id, uint64_t offset, uint64_t mask)
{
	struct kd_slot *s = kd_slot_by_id(vm, id);
	uint64_t w;

	if (!s || !s->logging || offset >= s->npages)
		return 0; /* KVM ignores entries of deleted or shrunk slots */
	w = offset / 64;
	mask <<= offset % 64; /* offset is 64-aligned by construction */
	return kd_reprotect_word(s, w, mask);
}

uint64_t kd_ring_reset_one(kd_vm *vm, struct kd_ring *r)
{
	uint64_t count = 0, reprotected = 0, mask = 0, base = 0;
	uint32_t cur_slot = UINT32_MAX, idx = r->reset_index;

	/* Coalesce runs of entries into 64-page masks, as kvm_dirty_ring_reset. */
	for (;;) {
		struct kd_dirty_gfn *e = &r->entries[idx & (r->size - 1)];
		uint32_t slot;
		uint64_t off;
		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KD_DIRTY_GFN_F_RESET))
			break;
		slot = e->slot;
		off = e->offset;
		__atomic_store_n(&e->flags, 0, __ATOMIC_RELAXED);
		idx++;
		count++;
		if (mask && slot == cur_slot && off >= base && off - base < 64) {
			mask |= 1ull << (off - base);
			continue;
		}
		if (mask)
			reprotected += reprotect_mask(vm, cur_slot, base, mask);
		cur_slot = slot;
		base = off & ~63ull;
		mask = 1ull << (off - base);
	}
	if (mask)
		reprotected += reprotect_mask(vm, cur_slot, base, mask);
	/* entries are zero before the producer may see them as free */
	__atomic_store_n(&r->reset_index, idx, __ATOMIC_RELEASE);
	kd_count_reprotect(vm, reprotected, false);
	return count;
}

/* Harvest every vCPU's ring into the slots' pending bitmaps, then reset. */
static int harvest_all(kd_vm *vm)
{
	struct kd_dirty_gfn buf[256];
	uint64_t reset = 0;

	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		for (;;) {
			uint64_t n = 0;
			if (vm->kvm) {
				int r = kd_kvm_ring_harvest(vm->kvm, i, buf, 256, &n);
				if (r)
					return r;
			} else {
				n = kd_ring_harvest_one(&vm->vcpus[i].ring, buf, 256);
			}
			vm->user.ring_harvested += n;
			for (uint64_t k = 0; k < n; k++) {
				struct kd_slot *s = kd_slot_by_id(vm, buf[k].slot);
				if (s && s->pending && buf[k].offset < s->npages)
					kd_pending_or(s, buf[k].offset / 64,
						      1ull << (buf[k].offset % 64));
			}
			if (n < 256)
				break;
		}
	}
	if (vm->kvm) {
		int r = kd_kvm_reset_dirty_rings(vm->kvm, &reset);
		if (r)
			return r;
	} else {
		for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
			reset += kd_ring_reset_one(vm, &vm->vcpus[i].ring);
	}
	vm->user.ring_reset += reset;
	return 0;
}

int kd_ring_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		    uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	int r = harvest_all(vm);

	if (r)
		return r;
	*count = kd_pending_take(vm, s, first, end, gfns, cap, resume);
	return 0;
}
