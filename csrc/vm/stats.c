/*
 * vm/stats.c - the event counters (struct kd_stats): user-side counters in
 * vm->user (under vm->lock), writer-side counters per vCPU, summed on read.
 * A reset clears the user side and moves each vCPU's baseline to its
 * current counters, which writers keep storing meanwhile (why a baseline
 * and not a store of zero: struct kd_vcpu in core/internal.h).
 */
#include "core/backend.h"

KD_API int kd_stats_get(kd_vm *vm, struct kd_stats *out)
{
	if (!vm || !out)
		return -EINVAL;
	kd_vm_lock(vm);
	*out = vm->user;
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		const struct kd_vcpu_counters *c = &vm->vcpus[i].c, *b = &vm->vcpus[i].base;
#define ADD(f) out->f += __atomic_load_n(&c->f, __ATOMIC_RELAXED) - b->f
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
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		const uint64_t *c = (const uint64_t *)&vm->vcpus[i].c;
		uint64_t *b = (uint64_t *)&vm->vcpus[i].base;
		for (size_t k = 0; k < sizeof(vm->vcpus[i].c) / 8; k++)
			b[k] = __atomic_load_n(&c[k], __ATOMIC_RELAXED);
	}
	kd_vm_unlock(vm);
	return 0;
}
