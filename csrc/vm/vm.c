/*
 * vm/vm.c - the VM object: creation with its configuration checks,
 * destruction, and KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2). The public
 * entry points of vm/ check arguments once, in KVM's errno order, and call
 * the backend through vm->ops (core/backend.h).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>

#include "core/backend.h"

_Static_assert(sizeof(struct kd_dirty_gfn) == 16, "struct kvm_dirty_gfn is 16 bytes");

/* Generic checks, then the backend's (tracking modes, ring size). */
static int check_config(const struct kd_vm_config *c)
{
	const struct kd_backend_ops *ops = kd_backend_ops(c->backend);

	if (c->reserved[0] || c->reserved[1] || c->address_spaces > KD_ADDRESS_SPACES)
		return -EINVAL;
	if (!ops || c->nvcpus < 1 || c->nvcpus > KD_MAX_VCPUS)
		return -EINVAL;
	if (c->tracking > KD_TRACK_MPROTECT ||
	    c->flags & ~(KD_VM_O1_PROTECT | KD_VM_GUEST_MEMORY | KD_VM_PAGE_VERSIONS))
		return -EINVAL;
	/* versions stand for guest memory, and only the emulator can keep them:
	 * the real kernel (kvm) and userfaultfd (uffd) track real pages */
	if (c->flags & KD_VM_PAGE_VERSIONS &&
	    (!(c->flags & KD_VM_GUEST_MEMORY) || c->backend == KD_BACKEND_KVM ||
	     c->backend == KD_BACKEND_UFFD))
		return -EINVAL;
	return ops->check_config(c);
}

KD_API int kd_vm_create(const struct kd_vm_config *config, kd_vm **out)
{
	const struct kd_backend_ops *ops;
	kd_vm *vm;
	int r;

	if (!config || !out)
		return -EINVAL;
	r = check_config(config);
	if (r)
		return r;
	ops = kd_backend_ops(config->backend);
	if (ops->variant && ops->variant(config))
		ops = ops->variant(config);
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->cfg = *config;
	vm->ops = ops;
	vm->vcpus = aligned_alloc(64, sizeof(*vm->vcpus) * config->nvcpus);
	if (!vm->vcpus) {
		free(vm);
		return -ENOMEM;
	}
	memset(vm->vcpus, 0, sizeof(*vm->vcpus) * config->nvcpus);
	pthread_mutex_init((pthread_mutex_t *)vm->lock_storage, NULL);
	vm->lock_initialised = 1;
	for (uint32_t i = 0; i < config->nvcpus; i++)
		vm->vcpus[i].index = i;
	r = ops->init ? ops->init(vm) : 0;
	if (r) {
		kd_vm_destroy(vm);
		return r;
	}
	if (!vm->cfg.address_spaces) /* the backend may have set what it has */
		vm->cfg.address_spaces = KD_ADDRESS_SPACES;
	*out = vm;
	return 0;
}

KD_API void kd_vm_destroy(kd_vm *vm)
{
	if (!vm)
		return;
	vm->holds = 0; /* destroying a held VM is the caller's error (kvmdirty/vm.h) */
	for (uint32_t a = 0; a < KD_ADDRESS_SPACES; a++) {
		const struct kd_memslots *t;
		while ((t = kd_memslots(vm, a)) && t->n) {
			struct kd_slot *s = t->s[0];
			kd_set_user_memory_region(vm, s->id, 0, s->base_gfn << KD_PAGE_SHIFT, 0);
		}
		kd_aspace_free(&vm->as[a]);
	}
	if (vm->ops->destroy)
		vm->ops->destroy(vm);
	if (vm->lock_initialised)
		pthread_mutex_destroy((pthread_mutex_t *)vm->lock_storage);
	free(vm->vcpus);
	free(vm);
}

KD_API int kd_vm_config_get(const kd_vm *vm, struct kd_vm_config *out)
{
	if (!vm || !out)
		return -EINVAL;
	*out = vm->cfg;
	return 0;
}

/*
 * virt/kvm/kvm_main.c kvm_vm_ioctl_enable_cap_generic: INITIALLY_SET is
 * allowed only together with MANUAL_PROTECT_ENABLE (x86's
 * KVM_DIRTY_LOG_MANUAL_CAPS); so 0, 1 and 3 pass, 2 and any other bit give
 * EINVAL.
 */
static bool manual_protect_flags_ok(uint64_t flags)
{
	uint64_t allowed = KD_MANUAL_PROTECT_ENABLE;

	if (flags & KD_MANUAL_PROTECT_ENABLE)
		allowed |= KD_INITIALLY_SET;
	return !(flags & ~allowed);
}

KD_API int kd_enable_manual_protect(kd_vm *vm, uint64_t flags)
{
	int r = 0;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (!manual_protect_flags_ok(flags))
		r = -EINVAL;
	else if (vm->ops->enable_manual_protect)
		r = vm->ops->enable_manual_protect(vm, flags);
	if (!r)
		vm->manual_protect = flags;
	kd_vm_unlock(vm);
	return r;
}

/* The count changes under vm->lock, so a memslot call in progress finishes
 * before a hold takes effect, and one that starts after sees it. */
KD_API int kd_vm_hold(kd_vm *vm)
{
	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	vm->holds++;
	kd_vm_unlock(vm);
	return 0;
}

KD_API int kd_vm_release(kd_vm *vm)
{
	int r = 0;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (vm->holds)
		vm->holds--;
	else
		r = -EINVAL;
	kd_vm_unlock(vm);
	return r;
}
