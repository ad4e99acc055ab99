/*
 * write.c - the guest side: a vCPU writing pages.
 *
 * Write-protect model: the first write to a protected page is a fault that
 * makes the page writable and logs it; later writes are free until a
 * collector protects the page again. PML model: the first write sets the
 * spte's D bit and appends the gfn to the vCPU's 512-entry PML buffer, which
 * drains into the log when full and whenever a collector kicks the vCPU.
 *
 * With a kernel bitmap and write protection, writable is the dirty bitmap
 * itself (struct kd_slot): the fault's fetch_or is the log mark.
 *
 * Ordering (why no write is lost; see also struct kd_slot in internal.h):
 *  writer:    [store value]; fetch_or(writable, bit) -> was clear: mark log
 *  collector: take bits from the log (xchg / fetch_and); fetch_and(writable,
 *             ~taken); [read page contents]
 * A writer that finds the bit set either precedes the collector's fetch_and
 * on that word (then its store is visible to the collector's later read: the
 * RMWs order it) or the page is dirty in the log and not yet taken. A writer
 * that finds it clear marks the log after setting writable, so the collector
 * either takes the mark now or leaves writable set and takes it next time.
 * Without guest memory there is no content to order, so a plain load of the
 * writable word replaces the fetch_or when the page is already writable.
 */
#include "internal.h"

void kd_log_mark(kd_vm *vm, struct kd_vcpu *v, struct kd_slot *s, uint64_t rel)
{
	switch (vm->cfg.backend) {
	case KD_BACKEND_TWOLEVEL:
		kd_twolevel_mark(s, rel);
		break;
	case KD_BACKEND_RING:
		kd_ring_push(&v->ring, s->id, rel);
		break;
	default: /* flat, and the byte map's kernel side */
		__atomic_fetch_or(&s->dirty[rel >> 6], 1ull << (rel & 63), __ATOMIC_SEQ_CST);
	}
}

/* Drain the vCPU's PML buffer into the log; caller holds v->lock. Returns
 * entries drained. Entries for deleted slots are dropped, as KVM does. */
static uint32_t pml_drain(kd_vm *vm, struct kd_vcpu *v)
{
	uint32_t n = v->pml_count;

	for (uint32_t i = 0; i < n; i++) {
		struct kd_slot *s = kd_slot_by_gfn(vm, 0, v->pml[i]);
		if (s && s->logging)
			kd_log_mark(vm, v, s, v->pml[i] - s->base_gfn);
	}
	v->pml_count = 0;
	return n;
}

void kd_pml_flush(kd_vm *vm, struct kd_vcpu *v)
{
	uint32_t n = pml_drain(vm, v);

	if (n) {
		vm->user.pml_flushes++;
		if (vm->cfg.backend == KD_BACKEND_RING)
			vm->user.ring_pushes += n;
	}
}

void kd_kick_all_vcpus(kd_vm *vm)
{
	if (vm->cfg.tracking != KD_TRACK_PML)
		return;
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		struct kd_vcpu *v = &vm->vcpus[i];
		kd_spin_lock(v->lock);
		kd_pml_flush(vm, v);
		kd_spin_unlock(v->lock);
	}
}

static inline struct kd_slot *lookup(kd_vm *vm, struct kd_slot *last, uint64_t gfn)
{
	if (last && gfn - last->base_gfn < last->npages)
		return last;
	return kd_slot_by_gfn(vm, 0, gfn);
}

/*
 * All or nothing: every gfn must be in a writable slot of address space 0.
 * Blocks whose min and max fall in the slot of the previous block (the
 * common case: one big slot) are checked with a vectorisable min/max.
 */
#define VALIDATE_BLOCK 64
static int validate(kd_vm *vm, const uint64_t *gfns, uint64_t n)
{
	struct kd_slot *s = NULL;

	for (uint64_t i = 0; i < n; i += VALIDATE_BLOCK) {
		uint64_t k = n - i < VALIDATE_BLOCK ? n - i : VALIDATE_BLOCK, lo = ~0ull, hi = 0;
		for (uint64_t j = 0; j < k; j++) {
			uint64_t g = gfns[i + j];
			lo = g < lo ? g : lo;
			hi = g > hi ? g : hi;
		}
		if (s && lo >= s->base_gfn && hi - s->base_gfn < s->npages)
			continue;
		for (uint64_t j = 0; j < k; j++) {
			s = lookup(vm, s, gfns[i + j]);
			if (!s || (s->flags & KD_MEM_READONLY))
				return -EFAULT;
		}
	}
	return 0;
}

static inline void store_value(struct kd_slot *s, uint64_t rel, uint64_t value)
{
	__atomic_store_n((uint64_t *)((char *)s->memory + (rel << KD_PAGE_SHIFT)), value,
			 __ATOMIC_RELAXED);
}

#define PREFETCH_AHEAD 16

/* Emulated backends: apply gfns[0..n) until done or the ring fills. */
static uint64_t write_emulated(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
			       uint64_t value, struct kd_vcpu_counters *c, uint32_t *exit_reason)
{
	const bool pml = vm->cfg.tracking == KD_TRACK_PML;
	const bool ring = vm->cfg.backend == KD_BACKEND_RING;
	const bool mem = vm->cfg.flags & KD_VM_GUEST_MEMORY;
	const bool locked = pml || ring;
	struct kd_slot *s = NULL;
	uint64_t i = 0;

	if (ring && kd_ring_soft_full(&v->ring)) {
		*exit_reason = KD_EXIT_DIRTY_RING_FULL;
		c->ring_full_exits++;
		return 0;
	}
	while (i < n) {
		uint64_t stop = n - i > KD_WRITE_BATCH ? i + KD_WRITE_BATCH : n;
		if (locked)
			kd_spin_lock(v->lock); /* guest entry */
		for (; i < stop; i++) {
			uint64_t gfn = gfns[i], rel, w, bit;
			s = lookup(vm, s, gfn);
			rel = gfn - s->base_gfn;
			if (i + PREFETCH_AHEAD < n) { /* random gfns miss in big slots */
				uint64_t ahead = gfns[i + PREFETCH_AHEAD] - s->base_gfn;
				if (ahead < s->npages && s->writable)
					__builtin_prefetch(&s->writable[ahead >> 6], 1, 3);
			}
			if (mem)
				store_value(s, rel, value);
			if (!s->logging) {
				c->untracked_writes++;
				continue;
			}
			w = rel >> 6;
			bit = 1ull << (rel & 63);
			if (!mem && (__atomic_load_n(&s->writable[w], __ATOMIC_RELAXED) & bit))
				continue;
			if (__atomic_fetch_or(&s->writable[w], bit, __ATOMIC_SEQ_CST) & bit)
				continue;
			if (s->writable == s->dirty) {
				/* the fault's RMW set the dirty bit too */
				c->write_faults++;
				if (s->summary)
					kd_twolevel_mark_summary(s, rel);
				continue;
			}
			if (pml) {
				c->pml_entries++;
				v->pml[v->pml_count++] = gfn;
				if (v->pml_count < KD_PML_ENTRIES)
					continue;
				c->pml_flushes++; /* PML-full VM exit */
				if (ring)
					c->ring_pushes += pml_drain(vm, v);
				else
					pml_drain(vm, v);
			} else {
				c->write_faults++;
				kd_log_mark(vm, v, s, rel);
				if (ring)
					c->ring_pushes++;
			}
			if (ring && kd_ring_soft_full(&v->ring)) {
				/* the push that reached the soft limit exits */
				*exit_reason = KD_EXIT_DIRTY_RING_FULL;
				c->ring_full_exits++;
				i++;
				break;
			}
		}
		if (locked)
			kd_spin_unlock(v->lock);
		if (*exit_reason)
			break;
	}
	c->writes += i;
	return i;
}

static void counters_add(struct kd_vcpu_counters *dst, const struct kd_vcpu_counters *src)
{
	uint64_t *d = (uint64_t *)dst;
	const uint64_t *s = (const uint64_t *)src;

	for (size_t k = 0; k < sizeof(*dst) / 8; k++)
		if (s[k])
			__atomic_store_n(&d[k], __atomic_load_n(&d[k], __ATOMIC_RELAXED) + s[k],
					 __ATOMIC_RELAXED);
}

KD_API int kd_write(kd_vm *vm, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		    uint64_t value, struct kd_write_result *res)
{
	struct kd_vcpu_counters c = {0};
	struct kd_slot *s = NULL;
	struct kd_vcpu *v;
	uint32_t exit_reason = 0;
	uint64_t applied = 0;
	int r = 0;

	if (!vm || !res || vcpu >= vm->cfg.nvcpus)
		return -EINVAL;
	if (!gfns && n)
		return -EFAULT;
	v = &vm->vcpus[vcpu];
	if (__atomic_exchange_n(&v->busy, 1, __ATOMIC_ACQUIRE))
		return -EBUSY;
	r = validate(vm, gfns, n);
	if (r)
		goto out;
	if (vm->cfg.backend == KD_BACKEND_KVM) {
		r = kd_kvm_write(vm->kvm, vcpu, gfns, n, value, &applied, &exit_reason);
		c.writes = applied;
		c.ring_full_exits = exit_reason == KD_EXIT_DIRTY_RING_FULL;
	} else if (vm->cfg.backend == KD_BACKEND_UFFD) {
		/* real stores; the kernel tracks them */
		s = NULL;
		for (uint64_t i = 0; i < n; i++) {
			s = lookup(vm, s, gfns[i]);
			store_value(s, gfns[i] - s->base_gfn, value);
			c.untracked_writes += !s->logging;
		}
		applied = c.writes = n;
	} else {
		applied = write_emulated(vm, v, gfns, n, value, &c, &exit_reason);
	}
	counters_add(&v->c, &c);
	res->applied = applied;
	res->exit_reason = exit_reason;
out:
	__atomic_store_n(&v->busy, 0, __ATOMIC_RELEASE);
	return r;
}
