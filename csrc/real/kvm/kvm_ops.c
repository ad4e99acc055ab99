/*
 * real/kvm/kvm_ops.c - the kvm backend's operations table: the VM calls of
 * kvmdirty/vm.h on a real /dev/kvm VM (kvm_backend.h). Two tables, chosen by
 * the config: the dirty bitmap (GET/CLEAR) or, with ring_entries, the
 * per-vCPU dirty rings.
 *
 * The generic layer keeps its slot table (core/slots.c) as a mirror of the
 * kernel's user memslots: it is changed only after the kernel accepted the
 * change (region_prepare is the ioctl), and holds per slot what the user
 * side needs (pending, the GET target) and the host memory the backend
 * mapped. The backend keeps its own record of each slot's mapping and of
 * the internal slot (kvm_internal.h says why it keeps its own table).
 */
#include "core/backend.h"
#include "kvm_backend.h"

static struct kd_kvm *K(kd_vm *vm)
{
	return vm->backend;
}

static int kvm_available(const char **why)
{
	*why = kd_kvm_unavailable_reason();
	return *why ? -ENODEV : 0;
}

/* The real kernel decides how it tracks: no PML or O(1) emulation. */
static int kvm_check_config(const struct kd_vm_config *c)
{
	if (c->tracking != KD_TRACK_WRITE_PROTECT || (c->flags & KD_VM_O1_PROTECT))
		return -EINVAL;
	return 0;
}

static int kvm_init(kd_vm *vm)
{
	struct kd_kvm *k = NULL;
	int r = kd_kvm_open(vm->cfg.nvcpus, vm->cfg.ring_entries, &k);

	if (r)
		return r;
	vm->backend = k;
	if (!vm->cfg.address_spaces)
		vm->cfg.address_spaces = kd_kvm_address_spaces(k);
	return 0;
}

static void kvm_destroy(kd_vm *vm)
{
	kd_kvm_close(K(vm));
	vm->backend = NULL;
}

static int kvm_region(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size)
{
	return kd_kvm_set_user_memory_region(K(vm), slot, flags, gpa, size);
}

static int kvm_slot_memory(kd_vm *vm, struct kd_slot *s)
{
	return kd_kvm_slot_memory(K(vm), s->id, &s->memory, &s->memory_bytes);
}

/* The backend unmaps a slot's memory when the kernel slot is deleted. */
static void kvm_slot_memory_free(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	s->memory = NULL;
	s->memory_bytes = 0;
}

/* The kernel owns the log; pending parks what a collect of another range or
 * slot brought in, scratch is the GET target. */
static int kvm_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	return kd_pending_scratch_alloc(s);
}

static int kvm_manual_protect(kd_vm *vm, uint64_t flags)
{
	return kd_kvm_enable_manual_protect(K(vm), flags);
}

static int kvm_write(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
		     uint64_t value, struct kd_vcpu_counters *c, uint64_t *applied,
		     uint32_t *exit_reason)
{
	int r = kd_kvm_write(K(vm), v->index, gfns, n, value, applied, exit_reason);

	c->writes = *applied;
	c->ring_full_exits = *exit_reason == KD_EXIT_DIRTY_RING_FULL;
	return r;
}

/* ---- bitmap mode ---- */

static int kvm_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	return kd_kvm_get_dirty_log(K(vm), s->id, bitmap);
}

static int kvm_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
		     const uint64_t *bitmap)
{
	return kd_kvm_clear_dirty_log(K(vm), s->id, first, num, bitmap);
}

/* GET (+ CLEAR of the range with manual protect) into the slot's scratch
 * bitmap, then take the range from pending. */
static int kvm_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		       uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t *bm = s->scratch;
	int r = kd_kvm_get_dirty_log(K(vm), s->id, bm);

	if (r)
		return r;
	if (!vm->manual_protect) {
		/* classic GET cleared the whole slot: park all of it */
		kd_pending_or_bitmap(s, bm);
	} else {
		/* GET copied: CLEAR exactly the range's dirty bits. CLEAR wants
		 * 64-aligned ranges: widen, and mask the bits outside. */
		uint64_t a = first & ~63ull, b = (end + 63) & ~63ull;
		for (uint64_t w = a / 64; w < b / 64; w++)
			bm[w] &= kd_range_mask(w, first, end);
		if (b > s->npages)
			b = s->npages;
		r = kd_kvm_clear_dirty_log(K(vm), s->id, a, (uint32_t)(b - a), bm + a / 64);
		if (r)
			return r;
		for (uint64_t w = a / 64; w < (end + 63) / 64; w++)
			kd_pending_or(s, w, bm[w]);
	}
	*count = kd_pending_take(vm, s, first, end, gfns, cap, resume);
	return 0;
}

/* ---- ring mode ---- */

static int kvm_ring_harvest(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			    uint64_t *count)
{
	return kd_kvm_ring_harvest(K(vm), vcpu, out, cap, count);
}

static int kvm_ring_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			    uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	return kd_ring_collect(vm, s, first, end, gfns, cap, count, resume, kvm_ring_harvest);
}

static int kvm_ring_entries(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn **entries,
			    uint32_t *nentries)
{
	return kd_kvm_ring_entries(K(vm), vcpu, entries, nentries);
}

static int kvm_ring_reset(kd_vm *vm, uint64_t *count)
{
	return kd_kvm_reset_dirty_rings(K(vm), count);
}

/* The kernel's indices are private: count DIRTY/RESET entries. */
static int kvm_ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit)
{
	struct kd_dirty_gfn *e;
	uint32_t n, u = 0;
	int r = kd_kvm_ring_entries(K(vm), vcpu, &e, &n);

	if (r)
		return r;
	for (uint32_t i = 0; i < n; i++)
		u += __atomic_load_n(&e[i].flags, __ATOMIC_ACQUIRE) != 0;
	*used = u;
	*soft_limit = n - KD_RING_RESERVED_ENTRIES;
	return 0;
}

#define KVM_COMMON_OPS                                   \
	.name = "kvm",                                   \
	.available = kvm_available,                      \
	.check_config = kvm_check_config,                \
	.init = kvm_init,                                \
	.destroy = kvm_destroy,                          \
	.region_prepare = kvm_region,                    \
	.slot_memory = kvm_slot_memory,                  \
	.slot_memory_free = kvm_slot_memory_free,        \
	.log_alloc = kvm_log_alloc,                      \
	.log_free = kd_slot_log_free,                    \
	.enable_manual_protect = kvm_manual_protect,     \
	.write = kvm_write

static const struct kd_backend_ops kvm_ring_ops = {
	KVM_COMMON_OPS,
	.has_ring = true,
	.collect = kvm_ring_collect,
	.ring_harvest = kvm_ring_harvest,
	.ring_entries = kvm_ring_entries,
	.ring_reset = kvm_ring_reset,
	.ring_usage = kvm_ring_usage,
};

static const struct kd_backend_ops *kvm_variant(const struct kd_vm_config *cfg)
{
	return cfg->ring_entries ? &kvm_ring_ops : NULL;
}

const struct kd_backend_ops kd_kvm_ops = {
	KVM_COMMON_OPS,
	.has_bitmap = true,
	.variant = kvm_variant,
	.get_dirty_log = kvm_get,
	.clear_dirty_log = kvm_clear,
	.collect = kvm_collect,
};
