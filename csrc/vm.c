/*
 * vm.c - the VM object: creation and its checks, locks, counters, and the
 * dispatch of each user-side call (GET, CLEAR, collect, ring calls) to the
 * backend that implements it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

_Static_assert(sizeof(struct kd_dirty_gfn) == 16, "struct kvm_dirty_gfn is 16 bytes");
_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((struct kd_vm *)0)->lock_storage),
	       "lock storage");

static const char *const backend_names[] = {"flat", "twolevel", "bytemap", "ring", "kvm", "uffd"};

KD_API const char *kd_version(void)
{
	return KD_VERSION_STRING;
}

KD_API const char *kd_backend_name(uint32_t backend)
{
	return backend < sizeof(backend_names) / sizeof(*backend_names) ? backend_names[backend]
									 : NULL;
}

KD_API int kd_backend_available(uint32_t backend, const char **why)
{
	const char *reason = NULL;
	int r = 0;

	if (!kd_backend_name(backend)) {
		reason = "unknown backend";
		r = -EINVAL;
	} else if (backend == KD_BACKEND_KVM) {
		reason = kd_kvm_unavailable_reason();
		r = reason ? -ENODEV : 0;
	} else if (backend == KD_BACKEND_UFFD) {
		r = kd_uffd_probe(0, &reason);
	}
	if (why)
		*why = reason;
	return r;
}

KD_API uint64_t kd_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void kd_vm_lock(kd_vm *vm)
{
	pthread_mutex_lock((pthread_mutex_t *)vm->lock_storage);
}

void kd_vm_unlock(kd_vm *vm)
{
	pthread_mutex_unlock((pthread_mutex_t *)vm->lock_storage);
}

/*
 * Ticket lock: FIFO, so a collector kicking a vCPU is not starved by a writer
 * that re-takes the lock for its next batch at once. lock[0] = next ticket,
 * lock[1] = ticket being served.
 */
void kd_spin_lock(unsigned *lock)
{
	unsigned ticket = __atomic_fetch_add(&lock[0], 1, __ATOMIC_RELAXED);

	while (__atomic_load_n(&lock[1], __ATOMIC_ACQUIRE) != ticket)
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#else
		sched_yield();
#endif
}

void kd_spin_unlock(unsigned *lock)
{
	__atomic_store_n(&lock[1], lock[1] + 1, __ATOMIC_RELEASE);
}

void kd_count_reprotect(kd_vm *vm, uint64_t pages, bool o1_capable)
{
	if (!pages)
		return;
	if (o1_capable && (vm->cfg.flags & KD_VM_O1_PROTECT))
		vm->user.protect_bumps++;
	else
		vm->user.pages_reprotected += pages;
	vm->user.tlb_flushes++;
}

/* kd_tracking -> enum kd_uffd_mode (uffd_backend.h) */
static uint32_t uffd_mode(uint32_t tracking)
{
	return tracking == KD_TRACK_UFFD_SYNC ? 1 : tracking == KD_TRACK_MPROTECT ? 2 : 0;
}

static bool emulated(uint32_t backend)
{
	return backend <= KD_BACKEND_RING;
}

static int check_config(const struct kd_vm_config *c)
{
	bool pml = c->tracking == KD_TRACK_PML;

	if (c->reserved[0] || c->reserved[1] || c->address_spaces > KD_ADDRESS_SPACES)
		return -EINVAL;
	if (!kd_backend_name(c->backend) || c->nvcpus < 1 || c->nvcpus > KD_MAX_VCPUS)
		return -EINVAL;
	if (c->tracking > KD_TRACK_MPROTECT || c->flags & ~(KD_VM_O1_PROTECT | KD_VM_GUEST_MEMORY))
		return -EINVAL;
	if (c->tracking >= KD_TRACK_UFFD_SYNC && c->backend != KD_BACKEND_UFFD)
		return -EINVAL;
	if (!emulated(c->backend) && (pml || (c->flags & KD_VM_O1_PROTECT)))
		return -EINVAL; /* the real kernel decides how it tracks */
	if (c->backend == KD_BACKEND_RING)
		return kd_ring_check_size(c->ring_entries, pml);
	if (c->backend != KD_BACKEND_KVM && c->ring_entries)
		return -EINVAL;
	return 0;
}

KD_API int kd_vm_create(const struct kd_vm_config *config, kd_vm **out)
{
	kd_vm *vm;
	int r;

	if (!config || !out)
		return -EINVAL;
	r = check_config(config);
	if (r)
		return r;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->cfg = *config;
	if (!vm->cfg.address_spaces)
		vm->cfg.address_spaces = KD_ADDRESS_SPACES;
	vm->vcpus = aligned_alloc(64, sizeof(*vm->vcpus) * config->nvcpus);
	if (!vm->vcpus) {
		free(vm);
		return -ENOMEM;
	}
	memset(vm->vcpus, 0, sizeof(*vm->vcpus) * config->nvcpus);
	pthread_mutex_init((pthread_mutex_t *)vm->lock_storage, NULL);
	vm->lock_initialised = 1;
	for (uint32_t i = 0; i < config->nvcpus; i++) {
		vm->vcpus[i].index = i;
		if (config->backend == KD_BACKEND_RING) {
			r = kd_ring_init(&vm->vcpus[i].ring, config->ring_entries,
					 config->tracking == KD_TRACK_PML);
			if (r)
				goto fail;
		}
	}
	if (config->backend == KD_BACKEND_KVM) {
		r = kd_kvm_open(config->nvcpus, config->ring_entries, &vm->kvm);
		if (!r && !config->address_spaces)
			vm->cfg.address_spaces = kd_kvm_address_spaces(vm->kvm);
	}
	else if (config->backend == KD_BACKEND_UFFD)
		r = kd_uffd_open(uffd_mode(config->tracking), &vm->uffd);
	if (r)
		goto fail;
	*out = vm;
	return 0;
fail:
	kd_vm_destroy(vm);
	return r;
}

KD_API void kd_vm_destroy(kd_vm *vm)
{
	if (!vm)
		return;
	for (uint32_t a = 0; a < KD_ADDRESS_SPACES; a++) {
		while (vm->as[a].nslots) {
			struct kd_slot *s = vm->as[a].sorted[0];
			kd_set_user_memory_region(vm, s->id, 0, s->base_gfn << KD_PAGE_SHIFT, 0);
		}
		kd_aspace_free(&vm->as[a]);
	}
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
		kd_ring_destroy(&vm->vcpus[i].ring);
	if (vm->kvm)
		kd_kvm_close(vm->kvm);
	if (vm->uffd)
		kd_uffd_close(vm->uffd);
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

KD_API int kd_enable_manual_protect(kd_vm *vm, uint64_t flags)
{
	int r = 0;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (vm->cfg.backend == KD_BACKEND_KVM)
		r = kd_kvm_enable_manual_protect(vm->kvm, flags);
	else if (flags & ~(KD_MANUAL_PROTECT_ENABLE | KD_INITIALLY_SET))
		r = -EINVAL;
	else if (vm->cfg.backend == KD_BACKEND_UFFD)
		r = -EOPNOTSUPP; /* PAGEMAP_SCAN reports and re-protects in one step */
	if (!r)
		vm->manual_protect = flags;
	kd_vm_unlock(vm);
	return r;
}

static bool uses_ring(const kd_vm *vm)
{
	return vm->cfg.backend == KD_BACKEND_RING ||
	       (vm->cfg.backend == KD_BACKEND_KVM && vm->cfg.ring_entries);
}

/* Common GET/CLEAR lookup, in KVM's order: ENXIO (no bitmap), EINVAL (slot
 * id; CLEAR's first_page % 64), ENOENT (no slot or no log). */
static int lookup_log(kd_vm *vm, uint32_t slot, bool misaligned, struct kd_slot **out)
{
	if (uses_ring(vm))
		return -ENXIO;
	if (kd_slot_id_check(vm, slot) || misaligned)
		return -EINVAL;
	*out = kd_slot_by_id(vm, slot);
	if (!*out || !(*out)->logging)
		return -ENOENT;
	return 0;
}

KD_API int kd_get_dirty_log(kd_vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t nwords)
{
	struct kd_slot *s = NULL;
	int r;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (vm->cfg.backend == KD_BACKEND_KVM) {
		s = kd_slot_by_id(vm, slot);
		if (s && (!bitmap || nwords < s->nwords))
			r = -EFAULT; /* the kernel would write past the buffer */
		else
			r = kd_kvm_get_dirty_log(vm->kvm, slot, bitmap);
		goto out;
	}
	r = lookup_log(vm, slot, false, &s);
	if (r)
		goto out;
	if (!bitmap || nwords < s->nwords) {
		r = -EFAULT;
		goto out;
	}
	if (vm->cfg.backend == KD_BACKEND_UFFD) {
		uint64_t n = 0;
		r = kd_uffd_collect(vm->uffd, s->id, 0, s->npages, bitmap, &n);
		if (!r)
			kd_count_reprotect(vm, n, false);
		goto out;
	}
	kd_kick_all_vcpus(vm);
	if (vm->cfg.backend == KD_BACKEND_TWOLEVEL)
		r = kd_twolevel_get(vm, s, bitmap);
	else
		r = kd_flat_get(vm, s, bitmap);
out:
	if (!r)
		vm->user.get_calls++;
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_clear_dirty_log(kd_vm *vm, uint32_t slot, uint64_t first_page,
			      uint32_t num_pages, const uint64_t *bitmap)
{
	struct kd_slot *s = NULL;
	int r;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	if (vm->cfg.backend == KD_BACKEND_KVM) {
		r = bitmap || !num_pages ? kd_kvm_clear_dirty_log(vm->kvm, slot, first_page,
								  num_pages, bitmap)
					 : -EFAULT;
		goto out;
	}
	r = lookup_log(vm, slot, first_page & 63, &s);
	if (r)
		goto out;
	if (first_page > s->npages || num_pages > s->npages - first_page ||
	    (num_pages < s->npages - first_page && (num_pages & 63))) {
		r = -EINVAL;
		goto out;
	}
	if (!bitmap && num_pages) {
		r = -EFAULT;
		goto out;
	}
	if (vm->cfg.backend == KD_BACKEND_UFFD) {
		r = -EOPNOTSUPP;
		goto out;
	}
	kd_kick_all_vcpus(vm);
	if (vm->cfg.backend == KD_BACKEND_TWOLEVEL)
		kd_twolevel_clear(vm, s, first_page, num_pages, bitmap);
	else
		kd_flat_clear(vm, s, first_page, num_pages, bitmap);
out:
	if (!r)
		vm->user.clear_calls++;
	kd_vm_unlock(vm);
	return r;
}

/* kvm backend in bitmap mode: GET (+ CLEAR of the range with manual
 * protect) into the slot's scratch bitmap, then take the range from pending. */
static int kvm_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		       uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t *bm = s->scratch;
	int r = kd_kvm_get_dirty_log(vm->kvm, s->id, bm);

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
		r = kd_kvm_clear_dirty_log(vm->kvm, s->id, a, (uint32_t)(b - a), bm + a / 64);
		if (r)
			return r;
		for (uint64_t w = a / 64; w < (end + 63) / 64; w++)
			kd_pending_or(s, w, bm[w]);
	}
	*count = kd_pending_take(vm, s, first, end, gfns, cap, resume);
	return 0;
}

/* uffd: PAGEMAP_SCAN reports (and re-protects) relative to `first` into the
 * slot's scratch bitmap; shift that into pending, then take the range. */
static int uffd_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t n = 0, words = (end - first + 63) / 64, shift = first % 64, w0 = first / 64;
	uint64_t *bm = s->scratch;
	int r = kd_uffd_collect(vm->uffd, s->id, first, end - first, bm, &n);

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

KD_API int kd_collect(kd_vm *vm, uint32_t slot, uint64_t first_page, uint64_t num_pages,
		      uint64_t *gfns, uint64_t cap, struct kd_collect_result *res)
{
	struct kd_slot *s;
	uint64_t end, n = 0, resume = 0;
	int r = 0;

	if (!vm || !res)
		return -EINVAL;
	if (kd_slot_id_check(vm, slot))
		return -EINVAL;
	kd_vm_lock(vm);
	s = kd_slot_by_id(vm, slot);
	if (!s || !s->logging) {
		r = -ENOENT;
		goto out;
	}
	if (first_page > s->npages || num_pages > s->npages - first_page ||
	    (cap < 64 && cap < num_pages)) {
		r = -EINVAL;
		goto out;
	}
	if (!gfns && cap) {
		r = -EFAULT;
		goto out;
	}
	end = first_page + num_pages;
	res->sampled_ns = kd_clock_ns();
	if (!num_pages) {
		resume = end;
		goto done;
	}
	switch (vm->cfg.backend) {
	case KD_BACKEND_FLAT:
		kd_kick_all_vcpus(vm);
		n = kd_flat_collect(vm, s, first_page, end, gfns, cap, &resume);
		break;
	case KD_BACKEND_TWOLEVEL:
		kd_kick_all_vcpus(vm);
		n = kd_twolevel_collect(vm, s, first_page, end, gfns, cap, &resume);
		break;
	case KD_BACKEND_BYTEMAP:
		kd_kick_all_vcpus(vm);
		n = kd_bytemap_collect(vm, s, first_page, end, gfns, cap, &resume);
		break;
	case KD_BACKEND_RING:
		kd_kick_all_vcpus(vm);
		r = kd_ring_collect(vm, s, first_page, end, gfns, cap, &n, &resume);
		break;
	case KD_BACKEND_KVM:
		if (vm->cfg.ring_entries)
			r = kd_ring_collect(vm, s, first_page, end, gfns, cap, &n, &resume);
		else
			r = kvm_collect(vm, s, first_page, end, gfns, cap, &n, &resume);
		break;
	case KD_BACKEND_UFFD:
		r = uffd_collect(vm, s, first_page, end, gfns, cap, &n, &resume);
		break;
	}
	if (r)
		goto out;
done:
	res->count = n;
	res->resume_page = resume;
	vm->user.collect_calls++;
	vm->user.pages_collected += n;
out:
	kd_vm_unlock(vm);
	return r;
}

static int ring_vcpu(kd_vm *vm, uint32_t vcpu)
{
	if (!uses_ring(vm))
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
	if (!r && vm->kvm) {
		r = kd_kvm_ring_harvest(vm->kvm, vcpu, out, cap, count);
	} else if (!r) {
		struct kd_vcpu *v = &vm->vcpus[vcpu];
		kd_spin_lock(v->lock); /* kick: drain PML into the ring first */
		kd_pml_flush(vm, v);
		kd_spin_unlock(v->lock);
		*count = kd_ring_harvest_one(&v->ring, out, cap);
	}
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
	if (vm->kvm)
		return kd_kvm_ring_entries(vm->kvm, vcpu, entries, nentries);
	*entries = vm->vcpus[vcpu].ring.entries;
	*nentries = vm->vcpus[vcpu].ring.size;
	return 0;
}

KD_API int kd_reset_dirty_rings(kd_vm *vm, uint64_t *count)
{
	uint64_t n = 0;
	int r = 0;

	if (!vm || !count)
		return -EINVAL;
	kd_vm_lock(vm);
	if (!uses_ring(vm))
		r = -EINVAL; /* KVM: no dirty ring configured */
	else if (vm->kvm)
		r = kd_kvm_reset_dirty_rings(vm->kvm, &n);
	else
		for (uint32_t i = 0; i < vm->cfg.nvcpus; i++)
			n += kd_ring_reset_one(vm, &vm->vcpus[i].ring);
	if (!r) {
		*count = n;
		vm->user.ring_reset += n;
	}
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit)
{
	struct kd_ring *ring;
	int r;

	if (!vm || !used || !soft_limit)
		return -EINVAL;
	r = ring_vcpu(vm, vcpu);
	if (r)
		return r;
	if (vm->kvm) {
		/* the kernel's indices are private: count DIRTY/RESET entries */
		struct kd_dirty_gfn *e;
		uint32_t n, u = 0;
		r = kd_kvm_ring_entries(vm->kvm, vcpu, &e, &n);
		if (r)
			return r;
		for (uint32_t i = 0; i < n; i++)
			u += __atomic_load_n(&e[i].flags, __ATOMIC_ACQUIRE) != 0;
		*used = u;
		*soft_limit = n - KD_RING_RESERVED_ENTRIES;
		return 0;
	}
	ring = &vm->vcpus[vcpu].ring;
	*used = __atomic_load_n(&ring->dirty_index, __ATOMIC_ACQUIRE) -
		__atomic_load_n(&ring->reset_index, __ATOMIC_ACQUIRE);
	*soft_limit = ring->soft_limit;
	return 0;
}

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
