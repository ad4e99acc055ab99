/*
 * core/backend.h - the backend operations table, in the spirit of the
 * kernel's kvm_x86_ops: one struct of function pointers per dirty-log
 * backend, filled by the backend's own file, chosen once at kd_vm_create
 * (vm->ops) and called by the public entry points (csrc/vm/) after they
 * have checked every argument once, in KVM's errno order.
 *
 * Nothing outside a backend's file and the registration table
 * (vm/backends.c) tests which backend a VM has: what generic code needs to
 * know is a capability field here (has_bitmap, has_ring) or a hook.
 *
 * Calling conventions: every int hook returns 0 or a negative errno and
 * changes nothing on failure. The user-side hooks (get, clear, collect,
 * ring, memslot, manual protect) run under vm->lock with the slot looked up
 * and the range checked; `write` runs on the vCPU's thread without vm->lock
 * (vcpu->busy held), with every gfn validated to lie in a writable slot of
 * address space 0. The hot loops stay inside each hook: a hook is called
 * once per call or batch, never per page.
 *
 * Adding a backend:
 *  1. add its number to enum kd_backend in include/kvmdirty/vm.h;
 *  2. write one file (emu/NAME.c for an emulated log) defining
 *     `const struct kd_backend_ops kd_NAME_ops = { ... }`: check_config,
 *     log_alloc/log_free, write, get/clear/collect (or the ring hooks), and
 *     the emulated defaults from emu/emu.h for the rest;
 *  3. register it in vm/backends.c (its extern declaration and
 *     `[KD_BACKEND_NAME] = &kd_NAME_ops` in the table); add the file to
 *     csrc/sources.mk.
 */
#ifndef KD_BACKEND_H
#define KD_BACKEND_H

#include "core/internal.h"

struct kd_backend_ops {
	const char *name; /* kd_backend_name() */

	/* Capabilities. */
	bool has_bitmap; /* KVM_GET/CLEAR_DIRTY_LOG exist (else -ENXIO) */
	bool has_ring;   /* per-vCPU dirty rings (else ring calls fail) */

	/* Probing and life cycle. */
	/* 0 if the backend can run here, else -errno and *why a sentence. NULL:
	 * always available. */
	int (*available)(const char **why);
	/* Checks of a config beyond the generic ones (tracking, flags,
	 * ring_entries), in KVM's order. */
	int (*check_config)(const struct kd_vm_config *cfg);
	/* A variant of the table for this config (kvm: bitmap or ring); NULL
	 * keeps this table. */
	const struct kd_backend_ops *(*variant)(const struct kd_vm_config *cfg);
	/* After vm->vcpus exist; destroy runs after every slot is deleted and
	 * after a failed init. NULL: nothing to do. */
	int (*init)(kd_vm *vm);
	void (*destroy)(kd_vm *vm);

	/* Memslots. */
	/* KVM_SET_USER_MEMORY_REGION's checks (emulated) or the kernel call
	 * itself (real): 0 means the generic slot table may follow. */
	int (*region_prepare)(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
			      uint64_t size);
	/* Set s->memory/memory_bytes of a new slot (may stay NULL), free it. */
	int (*slot_memory)(kd_vm *vm, struct kd_slot *s);
	void (*slot_memory_free)(kd_vm *vm, struct kd_slot *s);
	/* KD_MEM_LOG_DIRTY_PAGES turned on (or a slot created with it): the
	 * kernel log and user-side maps. log_free undoes it. */
	int (*log_alloc)(kd_vm *vm, struct kd_slot *s);
	void (*log_free)(kd_vm *vm, struct kd_slot *s);
	/* Adds what the log keeps beyond the slot's generic arrays (counted by
	 * kd_slot_log_memory) to *out. NULL: nothing beyond them. */
	void (*log_memory)(kd_vm *vm, struct kd_slot *s, struct kd_log_memory *out);
	/* Drain every vCPU's buffered entries (PML) into the logs: KVM kicks
	 * the vCPUs before GET/CLEAR and before a slot is deleted or moved.
	 * NULL: nothing buffered. */
	void (*kick)(kd_vm *vm);

	/* KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2), flags already checked
	 * against the kernel's rules. NULL: accepted. */
	int (*enable_manual_protect)(kd_vm *vm, uint64_t flags);

	/* Guest side: apply gfns[0..n) on vCPU v; *applied and *exit_reason
	 * as struct kd_write_result; counters into *c (added to v->c after). */
	int (*write)(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
		     uint64_t value, struct kd_vcpu_counters *c, uint64_t *applied,
		     uint32_t *exit_reason);

	/* User side (has_bitmap). bitmap: s->nwords words. clear: NULL gives
	 * -EOPNOTSUPP. */
	int (*get_dirty_log)(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap);
	int (*clear_dirty_log)(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
			       const uint64_t *bitmap);
	/* Every backend: take [first, end) (non-empty) into sorted gfns. */
	int (*collect)(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		       uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume);

	/* Rings (has_ring); vcpu < nvcpus. */
	int (*ring_harvest)(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			    uint64_t *count);
	int (*ring_entries)(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn **entries,
			    uint32_t *nentries);
	int (*ring_reset)(kd_vm *vm, uint64_t *count);
	int (*ring_usage)(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit);
};

/* vm/backends.c: the table indexed by enum kd_backend; NULL if unknown. */
const struct kd_backend_ops *kd_backend_ops(uint32_t backend);

#endif /* KD_BACKEND_H */
