/*
 * vm/memslot.c - KVM_SET_USER_MEMORY_REGION: the backend checks (or, on the
 * kvm backend, performs) the change, then the slot table follows: create
 * (memory, then the log if LOG_DIRTY_PAGES), delete, move (keeps the log),
 * or toggle LOG_DIRTY_PAGES (a fresh log, or none). And the slot queries.
 *
 * Writers read the slot table without vm->lock (core/slots.c): every change
 * builds a new table, and a changed slot is a new copy of its struct
 * (sharing memory and, unless the log is toggled, the log), published by
 * kd_memslots_install, which returns after the grace period. Only then is
 * anything the old table reached freed, after a kick has drained the PML
 * buffers that may name a retired slot copy.
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

static void kick(kd_vm *vm)
{
	if (vm->ops->kick)
		vm->ops->kick(vm);
}

/* Publish the table with old replaced by new (either may be NULL); after
 * the grace period and the kick nothing reaches old. -ENOMEM: nothing changed. */
static int replace(kd_vm *vm, uint32_t id, struct kd_slot *old, struct kd_slot *new)
{
	struct kd_memslots *t = kd_memslots_replace(vm, id >> 16, old, new);

	if (!t)
		return -ENOMEM;
	kd_memslots_install(vm, id >> 16, t, id, new);
	kick(vm);
	return 0;
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
	r = replace(vm, slot, NULL, s);
	if (r)
		goto fail;
	return 0;
fail:
	slot_free(vm, s);
	return r;
}

/* A copy of old without its log (the log stays old's, to be freed). */
static void drop_log(struct kd_slot *s)
{
	s->logging = false;
	s->writable = s->dirty = s->summary = s->scratch = s->pending = NULL;
	s->pending_summary = NULL;
	s->hier = NULL;
	s->bytemap = NULL;
	s->nsummary = s->npending_summary = 0;
}

static int slot_update(kd_vm *vm, struct kd_slot *old, uint32_t flags, uint64_t gpa)
{
	bool log = flags & KD_MEM_LOG_DIRTY_PAGES;
	bool move = (gpa >> KD_PAGE_SHIFT) != old->base_gfn;
	bool log_on = log && !old->logging, log_off = !log && old->logging;
	struct kd_slot *s = malloc(sizeof(*s));
	int r;

	if (!s)
		return -ENOMEM;
	*s = *old;
	if (log_off)
		drop_log(s);
	if (log_on) {
		drop_log(s);
		r = vm->ops->log_alloc(vm, s);
		if (r) {
			free(s);
			return r;
		}
	}
	s->logging = log;
	s->flags = flags;
	s->base_gfn = gpa >> KD_PAGE_SHIFT;
	r = replace(vm, old->id, old, s);
	if (r) {
		if (log_on)
			vm->ops->log_free(vm, s);
		free(s);
		return r;
	}
	/* Nothing reaches old now. */
	if (log_off)
		vm->ops->log_free(vm, old);
	free(old);
	if (move && s->writable && s->writable != s->dirty) {
		/* KVM zaps every mapping of a moved slot: the next write to any
		 * page faults again. Where protection is kept apart from the log
		 * (ring, PML) that is visible: a page harvested but not reset
		 * is pushed again. (With the bitmap as protection, the page's
		 * dirty bit stays set and the fault changes nothing.) Writers
		 * of the new table may set bits meanwhile: atomic stores. */
		for (uint64_t w = 0; w < s->nwords; w++)
			__atomic_store_n(&s->writable[w], 0, __ATOMIC_RELAXED);
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
		r = -EBUSY; /* writer pools checked their gfns once: see kd_vm_hold */
		goto out;
	}
	r = vm->ops->region_prepare(vm, slot, flags, gpa, size);
	if (r)
		goto out;
	old = kd_slot_by_id(vm, slot);
	/* KVM kicks every vCPU before deleting or moving a slot, which drains
	 * PML into the logs (or rings) while the slot still logs */
	if (old && (!size || (gpa >> KD_PAGE_SHIFT) != old->base_gfn))
		kick(vm);
	if (!size) {
		r = replace(vm, slot, old, NULL);
		if (!r)
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
	for (uint32_t a = 0; a < vm->cfg.address_spaces; a++) {
		const struct kd_memslots *t = kd_memslots(vm, a);
		for (uint32_t i = 0; t && i < t->n; i++, n++)
			if (n < cap)
				fill_info(t->s[i], &out[n]);
	}
	kd_vm_unlock(vm);
	return (int)n;
}
