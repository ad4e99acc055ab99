/*
 * real/kvm/kvm_dirty.c - reading what the kernel logged: KVM_GET_DIRTY_LOG,
 * KVM_CLEAR_DIRTY_LOG, the per-vCPU dirty rings (harvest, reset), and the
 * module's diagnostics.
 */
#define _GNU_SOURCE
#include "kvm_internal.h"
/* named from this folder: the module also builds alone, with only its own
 * folder and the public headers on the include path (tests/c/test_kvm_backend.c) */
#include "../../core/ring_fetch.h"

#if KD_KVM_NATIVE

/* ---- dirty bitmap ---- */

int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t *bitmap)
{
	if (!k)
		return -EINVAL;
	struct kvm_dirty_log d = {.slot = slot, .dirty_bitmap = bitmap};
	return ioctl(k->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0 ? -errno : 0;
}

int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t first_page,
			   uint32_t num_pages, const uint64_t *bitmap)
{
	if (!k)
		return -EINVAL;
	struct kvm_clear_dirty_log c = {
		.slot = slot,
		.num_pages = num_pages,
		.first_page = first_page,
		.dirty_bitmap = (void *)(uintptr_t)bitmap,
	};
	return ioctl(k->vm_fd, KVM_CLEAR_DIRTY_LOG, &c) < 0 ? -errno : 0;
}

/* ---- dirty ring ---- */

int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			uint64_t *count)
{
	if (!k || !count || (!out && cap) || !k->ring_entries || vcpu >= k->nvcpus)
		return -EINVAL;
	struct vcpu *v = &k->v[vcpu];
	pthread_mutex_lock(&v->ring_lock);
	*count = kd_ring_fetch_entries(v->ring, k->ring_entries, &v->fetch, out, cap);
	pthread_mutex_unlock(&v->ring_lock);
	return 0;
}

int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn **entries,
			uint32_t *nentries)
{
	if (!k || !entries || !nentries || !k->ring_entries || vcpu >= k->nvcpus)
		return -EINVAL;
	*entries = k->v[vcpu].ring;
	*nentries = k->ring_entries;
	return 0;
}

int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *count)
{
	if (!k || !count)
		return -EINVAL;
	int r = ioctl(k->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
	if (r < 0)
		return -errno;
	*count = (uint64_t)r;
	return 0;
}

int kd_kvm_internal_info(struct kd_kvm *k, struct kd_kvm_internal_info *out)
{
	if (!k || !out)
		return -EINVAL;
	pthread_rwlock_rdlock(&k->slots_lock);
	*out = (struct kd_kvm_internal_info){
		.slot = k->iid,
		.moves = k->moves,
		.gpa = k->igpa,
		.size = k->isize,
		.addr_limit = k->addr_limit,
		.maxphyaddr = k->maxphy,
		.gbpages = k->gbpages,
		.pt_pages_used = k->pt.used,
		.pt_pages_cap = KD_KG_PT_PAGES,
	};
	pthread_rwlock_unlock(&k->slots_lock);
	return 0;
}

uint32_t kd_kvm_address_spaces(const struct kd_kvm *k)
{
	return k->as_num;
}

#endif /* KD_KVM_NATIVE */
