/*
 * real/uffd/uffd_ops.c - the uffd backend's operations table: the VM calls
 * of kvmdirty/vm.h on memory tracked by the kernel's userfaultfd write
 * protection, PAGEMAP_SCAN or mprotect (uffd_backend.h).
 *
 * Memslots are the library's own (core/slots.c, with KVM's checks); each
 * logging slot's memory is registered with the tracker under the slot's
 * id. The tracker keeps its own range table because its fault handlers
 * (a handler thread, a SIGSEGV handler) look ranges up by host address,
 * concurrently and outside vm->lock; the slot table is by gfn, and
 * uffd_write reads it in kd_write's read-side section (core/slots.c).
 */
#include "core/backend.h"
#include "uffd_backend.h"

static struct kd_uffd *U(kd_vm *vm)
{
	return vm->backend;
}

static int uffd_available(const char **why)
{
	return kd_uffd_probe(KD_UFFD_ASYNC, why);
}

/* The kernel decides how it tracks: no PML or O(1) emulation, no ring. */
static int uffd_check_config(const struct kd_vm_config *c)
{
	if (c->tracking == KD_TRACK_PML || (c->flags & KD_VM_O1_PROTECT) || c->ring_entries)
		return -EINVAL;
	return 0;
}

static int uffd_init(kd_vm *vm)
{
	uint32_t mode = vm->cfg.tracking == KD_TRACK_UFFD_SYNC ? KD_UFFD_SYNC
			: vm->cfg.tracking == KD_TRACK_MPROTECT ? KD_UFFD_MPROTECT
								: KD_UFFD_ASYNC;
	struct kd_uffd *u = NULL;
	int r = kd_uffd_open(mode, &u);

	vm->backend = u;
	return r;
}

static void uffd_destroy(kd_vm *vm)
{
	kd_uffd_close(U(vm));
	vm->backend = NULL;
}

/* The tracker needs real memory to protect. */
static int uffd_slot_memory(kd_vm *vm, struct kd_slot *s)
{
	return kd_slot_memory_alloc(vm, s);
}

/* The kernel owns the log; pending parks what a scan of a wider range
 * brought in, scratch is the scan target. */
static int uffd_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	int r = kd_pending_scratch_alloc(s);

	if (r)
		return r;
	r = kd_uffd_add_range(U(vm), s->id, s->memory, s->memory_bytes);
	if (r)
		kd_slot_log_free(vm, s);
	return r;
}

static void uffd_log_free(kd_vm *vm, struct kd_slot *s)
{
	kd_uffd_remove_range(U(vm), s->id);
	kd_slot_log_free(vm, s);
}

/* PAGEMAP_SCAN reports and re-protects in one step: no manual protect. */
static int uffd_manual_protect(kd_vm *vm, uint64_t flags)
{
	(void)vm;
	(void)flags;
	return -EOPNOTSUPP;
}

/* Real stores; the kernel tracks them. */
static int uffd_write(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
		      uint64_t value, struct kd_vcpu_counters *c, uint64_t *applied,
		      uint32_t *exit_reason)
{
	struct kd_slot *s = NULL;

	(void)vm;
	(void)exit_reason;
	for (uint64_t i = 0; i < n; i++) {
		s = kd_slot_lookup_near(v->memslots, s, gfns[i]);
		kd_slot_store(s, gfns[i] - s->base_gfn, value);
		c->untracked_writes += !s->logging;
	}
	*applied = c->writes = n;
	return 0;
}

static int uffd_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	uint64_t n = 0;
	int r = kd_uffd_collect(U(vm), s->id, 0, s->npages, bitmap, &n);

	if (!r)
		kd_count_reprotect(vm, n, false);
	return r;
}

/* PAGEMAP_SCAN reports (and re-protects) relative to `first` into the
 * slot's scratch bitmap; shift that into pending, then take the range. */
static int uffd_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t n = 0, words = (end - first + 63) / 64, shift = first % 64, w0 = first / 64;
	uint64_t *bm = s->scratch;
	int r = kd_uffd_collect(U(vm), s->id, first, end - first, bm, &n);

	if (r)
		return r;
	kd_count_reprotect(vm, n, false);
	for (uint64_t i = 0; (i = kd_find_nonzero_word(bm, i, words)) < words; i++) {
		kd_pending_or(s, w0 + i, bm[i] << shift);
		if (shift && w0 + i + 1 < s->nwords)
			kd_pending_or(s, w0 + i + 1, bm[i] >> (64 - shift));
	}
	*count = kd_pending_take(vm, s, first, end, gfns, cap, resume);
	return 0;
}

/* No CLEAR: GET reports and re-protects (clear_dirty_log NULL: -EOPNOTSUPP). */
const struct kd_backend_ops kd_uffd_ops = {
	.name = "uffd",
	.has_bitmap = true,
	.available = uffd_available,
	.check_config = uffd_check_config,
	.init = uffd_init,
	.destroy = uffd_destroy,
	.region_prepare = kd_region_check,
	.slot_memory = uffd_slot_memory,
	.slot_memory_free = kd_slot_memory_free,
	.log_alloc = uffd_log_alloc,
	.log_free = uffd_log_free,
	.enable_manual_protect = uffd_manual_protect,
	.write = uffd_write,
	.get_dirty_log = uffd_get,
	.collect = uffd_collect,
};
