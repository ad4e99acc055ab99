/*
 * vm/ring.c - the dirty-ring calls (KVM_CAP_DIRTY_LOG_RING): harvest, the
 * ring memory, KVM_RESET_DIRTY_RINGS, usage. -ENXIO on a VM without rings
 * (-EINVAL for the reset, as KVM).
 */
#include "core/backend.h"

static int ring_vcpu(kd_vm *vm, uint32_t vcpu)
{
	if (!vm->ops->has_ring)
		return -ENXIO;
	return vcpu < vm->cfg.nvcpus ? 0 : -EINVAL;
}

KD_API int kd_ring_harvest(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			   uint64_t *count)
{
	int r;

	if (!vm || !count || (!out && cap))
		return -EINVAL;
	kd_vm_lock(vm);
	r = ring_vcpu(vm, vcpu);
	if (!r)
		r = vm->ops->ring_harvest(vm, vcpu, out, cap, count);
	if (!r)
		vm->user.ring_harvested += *count;
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_ring_entries(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn **entries,
			   uint32_t *nentries)
{
	int r;

	if (!vm || !entries || !nentries)
		return -EINVAL;
	r = ring_vcpu(vm, vcpu);
	if (r)
		return r;
	return vm->ops->ring_entries(vm, vcpu, entries, nentries);
}

KD_API int kd_reset_dirty_rings(kd_vm *vm, uint64_t *count)
{
	uint64_t n = 0;
	int r;

	if (!vm || !count)
		return -EINVAL;
	kd_vm_lock(vm);
	if (!vm->ops->has_ring)
		r = -EINVAL; /* KVM: no dirty ring configured */
	else
		r = vm->ops->ring_reset(vm, &n);
	if (!r) {
		*count = n;
		vm->user.ring_reset += n;
	}
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit)
{
	int r;

	if (!vm || !used || !soft_limit)
		return -EINVAL;
	r = ring_vcpu(vm, vcpu);
	if (r)
		return r;
	return vm->ops->ring_usage(vm, vcpu, used, soft_limit);
}
