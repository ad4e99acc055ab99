/*
 * real/kvm/kvm_stub.c - the module on anything but Linux x86-64: every entry
 * point reports -ENODEV (or nothing available).
 */
#include "kvm_internal.h"

#if !KD_KVM_NATIVE

uint32_t kd_kvm_address_spaces(const struct kd_kvm *k)
{
	(void)k;
	return 1;
}

const char *kd_kvm_unavailable_reason(void)
{
	return "kvm backend: needs Linux on x86-64";
}
int kd_kvm_open(uint32_t nvcpus, uint32_t ring_entries, struct kd_kvm **out)
{
	(void)nvcpus;
	(void)ring_entries;
	if (out)
		*out = NULL;
	return -ENODEV;
}
void kd_kvm_close(struct kd_kvm *k) { (void)k; }
int kd_kvm_set_user_memory_region(struct kd_kvm *k, uint32_t slot, uint32_t flags, uint64_t gpa,
				  uint64_t size)
{
	(void)k; (void)slot; (void)flags; (void)gpa; (void)size;
	return -ENODEV;
}
int kd_kvm_slot_memory(struct kd_kvm *k, uint32_t slot, void **host, uint64_t *size)
{
	(void)k; (void)slot; (void)host; (void)size;
	return -ENODEV;
}
int kd_kvm_enable_manual_protect(struct kd_kvm *k, uint64_t flags)
{
	(void)k; (void)flags;
	return -ENODEV;
}
int kd_kvm_write(struct kd_kvm *k, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		 uint64_t value, uint64_t *applied, uint32_t *exit_reason)
{
	(void)k; (void)vcpu; (void)gfns; (void)n; (void)value; (void)applied; (void)exit_reason;
	return -ENODEV;
}
int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t *bitmap)
{
	(void)k; (void)slot; (void)bitmap;
	return -ENODEV;
}
int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t first_page,
			   uint32_t num_pages, const uint64_t *bitmap)
{
	(void)k; (void)slot; (void)first_page; (void)num_pages; (void)bitmap;
	return -ENODEV;
}
int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			uint64_t *count)
{
	(void)k; (void)vcpu; (void)out; (void)cap; (void)count;
	return -ENODEV;
}
int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn **entries,
			uint32_t *nentries)
{
	(void)k; (void)vcpu; (void)entries; (void)nentries;
	return -ENODEV;
}
int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *count)
{
	(void)k; (void)count;
	return -ENODEV;
}
int kd_kvm_internal_info(struct kd_kvm *k, struct kd_kvm_internal_info *out)
{
	(void)k; (void)out;
	return -ENODEV;
}

#endif /* !KD_KVM_NATIVE */
