/*
 * core/slots.c - the slot table of each address space, shared by every
 * backend: slots by id, and a vector sorted by base_gfn that writers
 * binary-search without locks (memslots do not change under writers: see
 * kd_set_user_memory_region). Changes happen under vm->lock.
 */
#include <stdlib.h>

#include "core/internal.h"
#include "core/mapping.h"

int kd_slot_id_check(const kd_vm *vm, uint32_t slot)
{
	if ((slot >> 16) >= vm->cfg.address_spaces || (slot & 0xffff) >= KD_USER_MEM_SLOTS)
		return -EINVAL;
	return 0;
}

struct kd_slot *kd_slot_by_id(kd_vm *vm, uint32_t slot)
{
	struct kd_aspace *as;

	if (kd_slot_id_check(vm, slot))
		return NULL;
	as = &vm->as[slot >> 16];
	return as->by_id ? as->by_id[slot & 0xffff] : NULL;
}

int kd_slot_find(kd_vm *vm, uint32_t slot, bool need_log, struct kd_slot **out)
{
	if (kd_slot_id_check(vm, slot))
		return -EINVAL;
	*out = kd_slot_by_id(vm, slot);
	if (!*out || (need_log && !(*out)->logging))
		return -ENOENT;
	return 0;
}

struct kd_slot *kd_slot_by_gfn(kd_vm *vm, uint32_t as_id, uint64_t gfn)
{
	struct kd_aspace *as = &vm->as[as_id];
	uint32_t lo = 0, hi = as->nslots;

	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		struct kd_slot *s = as->sorted[mid];
		if (gfn < s->base_gfn)
			hi = mid;
		else if (gfn - s->base_gfn >= s->npages)
			lo = mid + 1;
		else
			return s;
	}
	return NULL;
}

bool kd_slot_overlaps(kd_vm *vm, uint32_t id, uint64_t base, uint64_t npages)
{
	struct kd_aspace *as = &vm->as[id >> 16];

	for (uint32_t i = 0; i < as->nslots; i++) {
		struct kd_slot *s = as->sorted[i];
		if (s->id == id)
			continue;
		if (base < s->base_gfn + s->npages && s->base_gfn < base + npages)
			return true;
	}
	return false;
}

static void sorted_remove(struct kd_aspace *as, struct kd_slot *s)
{
	for (uint32_t i = 0; i < as->nslots; i++) {
		if (as->sorted[i] == s) {
			memmove(&as->sorted[i], &as->sorted[i + 1],
				(as->nslots - i - 1) * sizeof(*as->sorted));
			as->nslots--;
			return;
		}
	}
}

static void sorted_insert(struct kd_aspace *as, struct kd_slot *s)
{
	uint32_t i = 0;

	while (i < as->nslots && as->sorted[i]->base_gfn < s->base_gfn)
		i++;
	memmove(&as->sorted[i + 1], &as->sorted[i], (as->nslots - i) * sizeof(*as->sorted));
	as->sorted[i] = s;
	as->nslots++;
}

int kd_slot_reserve(kd_vm *vm, uint32_t slot)
{
	struct kd_aspace *as = &vm->as[slot >> 16];

	if (!as->by_id) {
		as->by_id = calloc(KD_USER_MEM_SLOTS, sizeof(*as->by_id));
		if (!as->by_id)
			return -ENOMEM;
	}
	if (as->nslots == as->cap) {
		uint32_t cap = as->cap ? as->cap * 2 : 16;
		struct kd_slot **v = realloc(as->sorted, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		as->sorted = v;
		as->cap = cap;
	}
	return 0;
}

void kd_slot_insert(kd_vm *vm, struct kd_slot *s)
{
	struct kd_aspace *as = &vm->as[s->id >> 16];

	as->by_id[s->id & 0xffff] = s;
	sorted_insert(as, s);
}

void kd_slot_remove(kd_vm *vm, struct kd_slot *s)
{
	struct kd_aspace *as = &vm->as[s->id >> 16];

	sorted_remove(as, s);
	as->by_id[s->id & 0xffff] = NULL;
}

void kd_slot_rebase(kd_vm *vm, struct kd_slot *s, uint64_t base_gfn)
{
	struct kd_aspace *as = &vm->as[s->id >> 16];

	sorted_remove(as, s);
	s->base_gfn = base_gfn;
	sorted_insert(as, s);
}

void kd_aspace_free(struct kd_aspace *as)
{
	free(as->by_id);
	free(as->sorted);
	memset(as, 0, sizeof(*as));
}

void kd_slot_log_free(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	if (s->writable != s->dirty)
		kd_bitmap_free(s->writable, s->nwords);
	kd_bitmap_free(s->dirty, s->nwords);
	kd_pending_free(s);
	kd_bitmap_free(s->scratch, s->nwords);
	kd_bitmap_free(s->summary, s->nsummary);
	kd_pages_free(s->bytemap, s->npages);
	s->writable = s->dirty = s->scratch = s->summary = NULL;
	s->bytemap = NULL;
	s->nsummary = 0;
}

static void account(struct kd_log_memory *out, const void *p, uint64_t bytes)
{
	if (!p)
		return;
	out->reserved += kd_mapped_bytes(bytes);
	out->resident += kd_resident_bytes(p, bytes);
}

void kd_slot_log_memory(const struct kd_slot *s, struct kd_log_memory *out)
{
	if (s->writable != s->dirty)
		account(out, s->writable, s->nwords * 8);
	account(out, s->dirty, s->nwords * 8);
	account(out, s->summary, s->nsummary * 8);
	account(out, s->bytemap, s->npages);
	account(out, s->scratch, s->nwords * 8);
	account(out, s->pending, s->nwords * 8);
	account(out, s->pending_summary, s->npending_summary * 8);
}

int kd_slot_memory_alloc(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	s->memory_bytes = s->npages << KD_PAGE_SHIFT;
	s->memory = kd_pages_alloc(s->memory_bytes, false);
	if (!s->memory) {
		s->memory_bytes = 0;
		return -ENOMEM;
	}
	return 0;
}

void kd_slot_memory_free(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	kd_pages_free(s->memory, s->memory_bytes);
	s->memory = NULL;
	s->memory_bytes = 0;
}
