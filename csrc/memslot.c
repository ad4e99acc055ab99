/*
 * memslot.c - KVM_SET_USER_MEMORY_REGION rules and the slot tables.
 *
 * Checks follow virt/kvm/kvm_main.c in order: slot id (EINVAL), flags
 * (EINVAL), size/address alignment (EINVAL), address space (EINVAL),
 * wrap-around and page count (EINVAL), delete of a missing slot (EINVAL),
 * change of size or READONLY of an existing slot (EINVAL), overlap on create
 * or move (EEXIST). A move keeps the log; toggling LOG_DIRTY_PAGES
 * allocates a fresh log or frees it.
 *
 * Each address space keeps slots by id and a vector sorted by base_gfn that
 * writers binary-search without locks (memslots do not change under writers).
 */
#include <stdlib.h>

#include "internal.h"

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

static bool overlaps(struct kd_aspace *as, uint32_t id, uint64_t base, uint64_t npages)
{
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

static int aspace_reserve(struct kd_aspace *as)
{
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

/* Allocate the kernel log and user-side maps for the VM's backend. */
int kd_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	bool ones = vm->manual_protect & KD_INITIALLY_SET;
	uint32_t b = vm->cfg.backend;

	if (b == KD_BACKEND_KVM || b == KD_BACKEND_UFFD) {
		/* the kernel owns the log; pending parks what a collect of
		 * another range or slot brought in */
		int r = kd_pending_alloc(s);
		if (r)
			return r;
		s->scratch = kd_bitmap_alloc(s->nwords, false, 0); /* GET / scan target */
		if (!s->scratch) {
			kd_log_free(s);
			return -ENOMEM;
		}
		if (b == KD_BACKEND_UFFD)
			r = kd_uffd_add_range(vm->uffd, s->id, s->memory, s->memory_bytes);
		if (r)
			kd_log_free(s);
		return r;
	}

	/* With INITIALLY_SET, x86 KVM leaves 4K sptes writable until a CLEAR
	 * reaches them; otherwise enabling the log protects every page. */
	if (b == KD_BACKEND_RING) {
		if (kd_pending_alloc(s))
			goto nomem;
	} else {
		s->dirty = kd_bitmap_alloc(s->nwords, ones, s->npages);
		if (!s->dirty)
			goto nomem;
	}
	if (b != KD_BACKEND_RING && vm->cfg.tracking == KD_TRACK_WRITE_PROTECT)
		s->writable = s->dirty; /* see struct kd_slot */
	else
		s->writable = kd_bitmap_alloc(s->nwords, ones && b != KD_BACKEND_RING, s->npages);
	if (!s->writable)
		goto nomem;
	if (b == KD_BACKEND_TWOLEVEL) {
		uint64_t nchunks = (s->npages + KD_CHUNK_PAGES - 1) / KD_CHUNK_PAGES;
		s->nsummary = (nchunks + 63) / 64;
		s->summary = kd_bitmap_alloc(s->nsummary, ones, nchunks);
		if (!s->summary)
			goto nomem;
	}
	if (b == KD_BACKEND_BYTEMAP) {
		s->bytemap = kd_pages_alloc(s->npages, true);
		s->scratch = kd_bitmap_alloc(s->nwords, false, 0);
		if (!s->bytemap || !s->scratch)
			goto nomem;
	}
	if (!(ones && b != KD_BACKEND_RING))
		kd_count_reprotect(vm, s->npages, true);
	return 0;
nomem:
	kd_log_free(s);
	return -ENOMEM;
}

void kd_log_free(struct kd_slot *s)
{
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

static void slot_free(kd_vm *vm, struct kd_slot *s)
{
	if (s->logging && vm->cfg.backend == KD_BACKEND_UFFD)
		kd_uffd_remove_range(vm->uffd, s->id);
	kd_log_free(s);
	if (vm->cfg.backend != KD_BACKEND_KVM)
		kd_pages_free(s->memory, s->memory_bytes);
	free(s);
}

void kd_aspace_free(struct kd_aspace *as)
{
	free(as->by_id);
	free(as->sorted);
	memset(as, 0, sizeof(*as));
}

/* Emulated backends: KVM's checks, in KVM's order. */
static int check_region(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size)
{
	uint32_t as_id = slot >> 16, id = slot & 0xffff;
	uint64_t npages = size >> KD_PAGE_SHIFT;
	struct kd_slot *old;

	if (id >= KD_USER_MEM_SLOTS)
		return -EINVAL;
	if (flags & ~(KD_MEM_LOG_DIRTY_PAGES | KD_MEM_READONLY))
		return -EINVAL;
	if ((size & (KD_PAGE_SIZE - 1)) || (gpa & (KD_PAGE_SIZE - 1)))
		return -EINVAL;
	if (as_id >= vm->cfg.address_spaces)
		return -EINVAL;
	if (gpa + size < gpa)
		return -EINVAL;
	if (npages > KD_MAX_SLOT_PAGES)
		return -EINVAL;
	old = kd_slot_by_id(vm, slot);
	if (!size)
		return old ? 0 : -EINVAL;
	if (old) {
		if (npages != old->npages || ((flags ^ old->flags) & KD_MEM_READONLY))
			return -EINVAL;
		if ((gpa >> KD_PAGE_SHIFT) == old->base_gfn)
			return 0; /* flags only, or nothing */
	}
	if (overlaps(&vm->as[as_id], slot, gpa >> KD_PAGE_SHIFT, npages))
		return -EEXIST;
	/* x86 kvm_arch_prepare_memory_region: the last gfn of a created or
	 * moved slot must be addressable (kvm_mmu_max_gfn) */
	if ((gpa >> KD_PAGE_SHIFT) + npages - 1 > KD_MAX_GFN)
		return -EINVAL;
	return 0;
}

static int slot_create(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size)
{
	struct kd_aspace *as = &vm->as[slot >> 16];
	struct kd_slot *s;
	int r = aspace_reserve(as);

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
	if (vm->cfg.backend == KD_BACKEND_KVM) {
		r = kd_kvm_slot_memory(vm->kvm, slot, &s->memory, &s->memory_bytes);
		if (r)
			goto fail;
	} else if ((vm->cfg.flags & KD_VM_GUEST_MEMORY) || vm->cfg.backend == KD_BACKEND_UFFD) {
		s->memory_bytes = size;
		s->memory = kd_pages_alloc(size, false);
		if (!s->memory) {
			r = -ENOMEM;
			goto fail;
		}
	}
	if (flags & KD_MEM_LOG_DIRTY_PAGES) {
		r = kd_log_alloc(vm, s);
		if (r)
			goto fail;
		s->logging = true;
	}
	as->by_id[slot & 0xffff] = s;
	sorted_insert(as, s);
	return 0;
fail:
	if (vm->cfg.backend != KD_BACKEND_KVM)
		kd_pages_free(s->memory, s->memory_bytes);
	free(s);
	return r;
}

static int slot_update(kd_vm *vm, struct kd_slot *s, uint32_t flags, uint64_t gpa)
{
	struct kd_aspace *as = &vm->as[s->id >> 16];
	bool log = flags & KD_MEM_LOG_DIRTY_PAGES;
	bool move = (gpa >> KD_PAGE_SHIFT) != s->base_gfn;

	if (log && !s->logging) {
		int r = kd_log_alloc(vm, s);
		if (r)
			return r;
	} else if (!log && s->logging) {
		if (vm->cfg.backend == KD_BACKEND_UFFD)
			kd_uffd_remove_range(vm->uffd, s->id);
		kd_log_free(s);
	}
	s->logging = log;
	s->flags = flags;
	if (move) {
		sorted_remove(as, s);
		s->base_gfn = gpa >> KD_PAGE_SHIFT;
		sorted_insert(as, s);
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
	if (vm->cfg.backend == KD_BACKEND_KVM)
		r = kd_kvm_set_user_memory_region(vm->kvm, slot, flags, gpa, size);
	else
		r = check_region(vm, slot, flags, gpa, size);
	if (r)
		goto out;
	old = kd_slot_by_id(vm, slot);
	/* KVM kicks every vCPU before deleting or moving a slot, which drains
	 * PML into the logs (or rings) while the slot still logs */
	if (old && (!size || (gpa >> KD_PAGE_SHIFT) != old->base_gfn))
		kd_kick_all_vcpus(vm);
	if (!size) {
		sorted_remove(&vm->as[slot >> 16], old);
		vm->as[slot >> 16].by_id[slot & 0xffff] = NULL;
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
	int r = 0;

	if (!vm || !out)
		return -EINVAL;
	if (kd_slot_id_check(vm, slot))
		return -EINVAL;
	kd_vm_lock(vm);
	s = kd_slot_by_id(vm, slot);
	if (s)
		fill_info(s, out);
	else
		r = -ENOENT;
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
