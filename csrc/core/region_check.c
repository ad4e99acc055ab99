/*
 * core/region_check.c - KVM_SET_USER_MEMORY_REGION's checks, as
 * virt/kvm/kvm_main.c and arch/x86 make them, in their order, for every
 * backend whose memslots are the library's own (emulated and uffd; the kvm
 * backend asks the kernel): slot id (EINVAL), flags (EINVAL), size/address
 * alignment (EINVAL), address space (EINVAL), wrap-around and page count
 * (EINVAL), delete of a missing slot (EINVAL), change of size or READONLY of
 * an existing slot (EINVAL), overlap on create or move (EEXIST), last gfn
 * beyond kvm_mmu_max_gfn (EINVAL).
 */
#include "core/internal.h"

int kd_region_check(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size)
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
	if (kd_slot_overlaps(vm, slot, gpa >> KD_PAGE_SHIFT, npages))
		return -EEXIST;
	/* x86 kvm_arch_prepare_memory_region: the last gfn of a created or
	 * moved slot must be addressable (kvm_mmu_max_gfn) */
	if ((gpa >> KD_PAGE_SHIFT) + npages - 1 > KD_MAX_GFN)
		return -EINVAL;
	return 0;
}
