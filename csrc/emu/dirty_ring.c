/*
 * emu/dirty_ring.c - the emulated backend of per-vCPU dirty rings with KVM's semantics
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

#include "emu/emu.h"

static int ring_check_size(uint32_t entries, bool pml)
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

static int ring_init(struct kd_ring *r, uint32_t entries, bool pml)
{
	memset(r, 0, sizeof(*r));
	r->entries = kd_pages_alloc((uint64_t)entries * sizeof(*r->entries), true);
	if (!r->entries)
		return -ENOMEM;
	r->size = entries;
	r->soft_limit = entries - KD_RING_RESERVED_ENTRIES - (pml ? KD_PML_ENTRIES : 0);
	return 0;
}

static void ring_destroy(struct kd_ring *r)
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

static uint64_t ring_harvest_one(struct kd_ring *r, struct kd_dirty_gfn *out, uint64_t cap)
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

static uint64_t ring_reset_one(kd_vm *vm, struct kd_ring *r)
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

/* ---- the ops ---- */

static int ring_check_config(const struct kd_vm_config *c)
{
	if (c->tracking >= KD_TRACK_UFFD_SYNC)
		return -EINVAL;
	return ring_check_size(c->ring_entries, c->tracking == KD_TRACK_PML);
}

static int ring_vm_init(kd_vm *vm)
{
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		int r = ring_init(&vm->vcpus[i].ring, vm->cfg.ring_entries,
				  vm->cfg.tracking == KD_TRACK_PML);
		if (r)
			return r;
	}
	return 0;
}

static void ring_vm_destroy(kd_vm *vm)
{
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
		ring_destroy(&vm->vcpus[i].ring);
}

/* The ring is the log: a slot keeps its protection state and the pages a
 * harvest brought in for it. Enabling the log protects every page
 * (INITIALLY_SET is a bitmap notion). */
static int ring_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	if (kd_pending_alloc(s))
		return -ENOMEM;
	s->writable = kd_bitmap_alloc(s->nwords, false, s->npages);
	if (!s->writable) {
		kd_slot_log_free(vm, s);
		return -ENOMEM;
	}
	kd_count_reprotect(vm, s->npages, true);
	return 0;
}

static int ring_fetch(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
		      uint64_t *count)
{
	*count = ring_harvest_one(&vm->vcpus[vcpu].ring, out, cap);
	return 0;
}

static int ring_harvest(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			uint64_t *count)
{
	struct kd_vcpu *v = &vm->vcpus[vcpu];

	kd_spin_lock(v->lock); /* kick: drain PML into the ring first */
	kd_pml_flush(vm, v);
	kd_spin_unlock(v->lock);
	return ring_fetch(vm, vcpu, out, cap, count);
}

static int ring_entries(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn **entries,
			uint32_t *nentries)
{
	*entries = vm->vcpus[vcpu].ring.entries;
	*nentries = vm->vcpus[vcpu].ring.size;
	return 0;
}

static int ring_reset(kd_vm *vm, uint64_t *count)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
		n += ring_reset_one(vm, &vm->vcpus[i].ring);
	*count = n;
	return 0;
}

static int ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit)
{
	struct kd_ring *ring = &vm->vcpus[vcpu].ring;

	*used = __atomic_load_n(&ring->dirty_index, __ATOMIC_ACQUIRE) -
		__atomic_load_n(&ring->reset_index, __ATOMIC_ACQUIRE);
	*soft_limit = ring->soft_limit;
	return 0;
}

static int ring_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	return kd_ring_collect(vm, s, first, end, gfns, cap, count, resume, ring_fetch);
}

const struct kd_backend_ops kd_ring_ops = {
	.name = "ring",
	.has_ring = true,
	.check_config = ring_check_config,
	.init = ring_vm_init,
	.destroy = ring_vm_destroy,
	KD_EMU_COMMON_OPS,
	.log_alloc = ring_log_alloc,
	.collect = ring_collect,
	.ring_harvest = ring_harvest,
	.ring_entries = ring_entries,
	.ring_reset = ring_reset,
	.ring_usage = ring_usage,
};
