/*
 * emu/ring_backend.c - the emulated "ring" backend: per-vCPU dirty rings
 * with KVM's semantics (KVM_CAP_DIRTY_LOG_RING_ACQ_REL) instead of a
 * bitmap. Built from the ring buffer (emu/dirty_ring.h: sizes, push, reset),
 * the user side's harvest (core/ring_fetch.h) and collect (core/ring_collect.c),
 * and the write path's PML drain (emu/wp_write.c) for the kick before a
 * harvest.
 */
#include "core/ring_fetch.h"
#include "emu/dirty_ring.h"
#include "emu/emu.h"

static int ring_check_config(const struct kd_vm_config *c)
{
	if (c->tracking >= KD_TRACK_UFFD_SYNC)
		return -EINVAL;
	return kd_ring_check_size(c->ring_entries, c->tracking == KD_TRACK_PML);
}

static int ring_vm_init(kd_vm *vm)
{
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		int r = kd_ring_init(&vm->vcpus[i].ring, vm->cfg.ring_entries,
				     vm->cfg.tracking == KD_TRACK_PML);
		if (r)
			return r;
	}
	return 0;
}

static void ring_vm_destroy(kd_vm *vm)
{
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
		kd_ring_destroy(&vm->vcpus[i].ring);
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
	struct kd_ring *r = &vm->vcpus[vcpu].ring;

	*count = kd_ring_fetch_entries(r->entries, r->size, &r->fetch_index, out, cap);
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
		n += kd_ring_reset(vm, &vm->vcpus[i].ring);
	*count = n;
	return 0;
}

static int ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit)
{
	struct kd_ring *ring = &vm->vcpus[vcpu].ring;

	*used = kd_ring_used(ring);
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
