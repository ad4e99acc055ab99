/*
 * vm/memslot.c - KVM_SET_USER_MEMORY_REGION: the backend checks (or, on the
 * kvm backend, performs) the change, then the slot table follows: create
 * (memory, then the log if LOG_DIRTY_PAGES), delete, move (keeps the log),
 * or toggle LOG_DIRTY_PAGES (a fresh log, or none). And the slot queries.
 */
#include <stdlib.h>

#include "core/backend.h"

static void slot_free(kd_vm *vm, struct kd_slot *s)
{
	if (s->logging)
		vm->ops->log_free(vm, s);
	vm->ops->slot_memory_free(vm, s);
	free(s);
}

static int slot_create(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size)
{
	struct kd_slot *s;
	int r = kd_slot_reserve(vm, slot);

	if (r)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->id = slot;
	s->flags = flags;
	s->base_gfn = gpa >> KD_PAGE_SHIFT;
	s->npages = size >> KD_PAGE_SHIFT;
	s->nwords = (s->npages + 63) / 64;
	r = vm->ops->slot_memory(vm, s);
	if (r)
		goto fail;
	if (flags & KD_MEM_LOG_DIRTY_PAGES) {
		r = vm->ops->log_alloc(vm, s);
		if (r)
			goto fail;
		s->logging = true;
	}
	kd_slot_insert(vm, s);
	return 0;
fail:
	slot_free(vm, s);
	return r;
}

static int slot_update(kd_vm *vm, struct kd_slot *s, uint32_t flags, uint64_t gpa)
{
	bool log = flags & KD_MEM_LOG_DIRTY_PAGES;
	bool move = (gpa >> KD_PAGE_SHIFT) != s->base_gfn;

	if (log && !s->logging) {
		int r = vm->ops->log_alloc(vm, s);
		if (r)
			return r;
	} else if (!log && s->logging) {
		vm->ops->log_free(vm, s);
	}
	s->logging = log;
	s->flags = flags;
	if (move) {
		kd_slot_rebase(vm, s, gpa >> KD_PAGE_SHIFT);
		/* KVM zaps every mapping of a moved slot: the next write to any
		 * page faults again. Where protection is kept apart from the log
		 * (ring, PML) that is visible: a page harvested but not reset
		 * is pushed again. (With the bitmap as protection, the page's
		 * dirty bit stays set and the fault changes nothing.) */
		if (s->writable && s->writable != s->dirty)
			memset(s->writable, 0, s->nwords * 8);
	}
	return 0;
}

KD_API int kd_set_user_memory_region(kd_vm *vm, uint32_t slot, uint32_t flags,
				     uint64_t gpa, uint64_t size)
{
	struct kd_slot *old;
	int r;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (vm->holds) {
		r = -EBUSY; /* threads write without the lock: see kd_vm_hold */
		goto out;
	}
	r = vm->ops->region_prepare(vm, slot, flags, gpa, size);
	if (r)
		goto out;
	old = kd_slot_by_id(vm, slot);
	/* KVM kicks every vCPU before deleting or moving a slot, which drains
	 * PML into the logs (or rings) while the slot still logs */
	if (old && (!size || (gpa >> KD_PAGE_SHIFT) != old->base_gfn) && vm->ops->kick)
		vm->ops->kick(vm);
	if (!size) {
		kd_slot_remove(vm, old);
		slot_free(vm, old);
	} else if (old) {
		r = slot_update(vm, old, flags, gpa);
	} else {
		r = slot_create(vm, slot, flags, gpa, size);
	}
	/* On the kvm backend the kernel already changed; a mirror failure
	 * (ENOMEM) is reported but cannot be rolled back there. */
out:
	kd_vm_unlock(vm);
	return r;
}

static void fill_info(const struct kd_slot *s, struct kd_slot_info *out)
{
	out->slot = s->id;
	out->flags = s->flags;
	out->base_gfn = s->base_gfn;
	out->npages = s->npages;
	out->memory = s->memory;
}

KD_API int kd_slot_info(kd_vm *vm, uint32_t slot, struct kd_slot_info *out)
{
	struct kd_slot *s;
	int r;

	if (!vm || !out)
		return -EINVAL;
	kd_vm_lock(vm);
	r = kd_slot_find(vm, slot, false, &s);
	if (!r)
		fill_info(s, out);
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_log_memory(kd_vm *vm, uint32_t slot, struct kd_log_memory *out)
{
	struct kd_slot *s;
	int r;

	if (!vm || !out)
		return -EINVAL;
	kd_vm_lock(vm);
	r = kd_slot_find(vm, slot, true, &s);
	if (!r) {
		*out = (struct kd_log_memory){0};
		kd_slot_log_memory(s, out);
		if (vm->ops->log_memory)
			vm->ops->log_memory(vm, s, out);
	}
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_slot_list(kd_vm *vm, struct kd_slot_info *out, uint32_t cap)
{
	uint32_t n = 0;

	if (!vm || (!out && cap))
		return -EINVAL;
	kd_vm_lock(vm);
	for (uint32_t a = 0; a < vm->cfg.address_spaces; a++)
		for (uint32_t i = 0; i < vm->as[a].nslots; i++, n++)
			if (n < cap)
				fill_info(vm->as[a].sorted[i], &out[n]);
	kd_vm_unlock(vm);
	return (int)n;
}
