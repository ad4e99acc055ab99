/*
 * vm/stats.c - the event counters (struct kd_stats): user-side counters in
 * vm->user (under vm->lock), writer-side counters per vCPU, summed on read.
 */
#include "core/backend.h"

KD_API int kd_stats_get(kd_vm *vm, struct kd_stats *out)
{
	if (!vm || !out)
		return -EINVAL;
	kd_vm_lock(vm);
	*out = vm->user;
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		const struct kd_vcpu_counters *c = &vm->vcpus[i].c;
#define ADD(f) out->f += __atomic_load_n(&c->f, __ATOMIC_RELAXED)
		ADD(writes);
		ADD(untracked_writes);
		ADD(write_faults);
		ADD(pml_entries);
		ADD(pml_flushes);
		ADD(ring_pushes);
		ADD(ring_full_exits);
#undef ADD
	}
	kd_vm_unlock(vm);
	return 0;
}

KD_API int kd_stats_reset(kd_vm *vm)
{
	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	memset(&vm->user, 0, sizeof(vm->user));
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
		memset(&vm->vcpus[i].c, 0, sizeof(vm->vcpus[i].c));
	kd_vm_unlock(vm);
	return 0;
}
