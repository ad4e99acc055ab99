/*
 * emu/dirty_ring.c - the emulated per-vCPU dirty ring buffer, the kernel's
 * side of KVM's dirty ring (virt/kvm/dirty_ring.c,
 * Documentation/virt/kvm/api.rst): sizes, memory and KVM_RESET_DIRTY_RINGS.
 * The state machine and who owns which index: emu/dirty_ring.h. Calls only
 * into core/; the write path pushes (inline, emu/dirty_ring.h) and the ring
 * backend (emu/ring_backend.c) drives the rest.
 */
#include "emu/dirty_ring.h"

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

uint64_t kd_ring_reset(kd_vm *vm, struct kd_ring *r)
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
