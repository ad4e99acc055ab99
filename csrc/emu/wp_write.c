/*
 * emu/wp_write.c - the emulated guest side: a vCPU writing pages (the write
 * hook of every emulated backend), and the PML drain / vCPU kick.
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
 * Ordering (why no write is lost; see also struct kd_slot in core/internal.h):
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
#include "emu/emu.h"

/* Drain the vCPU's PML buffer into the log; caller holds v->lock. Returns
 * entries drained. An entry names the slot copy its write saw, alive until
 * the memslot change that retires it has kicked every vCPU (vm/memslot.c):
 * a moved slot's copies share the log, a deleted slot's log is freed after. */
static uint32_t pml_drain(kd_vm *vm, struct kd_vcpu *v)
{
	uint32_t n = v->pml_count;

	(void)vm;
	for (uint32_t i = 0; i < n; i++) {
		struct kd_slot *s = v->pml[i].s;
		if (s->logging)
			kd_log_mark(v, s, v->pml[i].rel);
	}
	v->pml_count = 0;
	return n;
}

void kd_pml_flush(kd_vm *vm, struct kd_vcpu *v)
{
	uint32_t n = pml_drain(vm, v);

	if (n) {
		vm->user.pml_flushes++;
		if (vm->ops->has_ring)
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

#define PREFETCH_AHEAD 16

/* Apply gfns[0..n) until done or the ring fills. The counters are kept in
 * a local copy, which the compiler holds in registers (the caller's struct
 * could alias the log words, forcing a store per page), and added at the
 * end. */
int kd_emu_write(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n, uint64_t value,
		 struct kd_vcpu_counters *counters, uint64_t *applied, uint32_t *exit_reason)
{
	struct kd_vcpu_counters local = {0}, *c = &local;
	const bool pml = vm->cfg.tracking == KD_TRACK_PML;
	const bool ring = vm->ops->has_ring;
	const bool mem = vm->cfg.flags & KD_VM_GUEST_MEMORY;
	const bool locked = pml || ring;
	struct kd_slot *s = NULL;
	uint64_t i = 0;

	if (ring && kd_ring_soft_full(&v->ring)) {
		*exit_reason = KD_EXIT_DIRTY_RING_FULL;
		counters->ring_full_exits++;
		*applied = 0;
		return 0;
	}
	while (i < n) {
		uint64_t stop = n - i > KD_WRITE_BATCH ? i + KD_WRITE_BATCH : n;
		if (locked)
			kd_spin_lock(v->lock); /* guest entry */
		for (; i < stop; i++) {
			uint64_t gfn = gfns[i], rel, w, bit;
			s = kd_slot_lookup_near(v->memslots, s, gfn);
			rel = gfn - s->base_gfn;
			if (i + PREFETCH_AHEAD < n) { /* random gfns miss in big slots */
				uint64_t ahead = gfns[i + PREFETCH_AHEAD] - s->base_gfn;
				if (ahead < s->npages && s->writable)
					__builtin_prefetch(&s->writable[ahead >> 6], 1, 3);
			}
			if (mem)
				kd_slot_store(s, rel, value);
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
				v->pml[v->pml_count++] = (struct kd_pml_entry){s, rel};
				if (v->pml_count < KD_PML_ENTRIES)
					continue;
				c->pml_flushes++; /* PML-full VM exit */
				if (ring)
					c->ring_pushes += pml_drain(vm, v);
				else
					pml_drain(vm, v);
			} else {
				c->write_faults++;
				kd_log_mark(v, s, rel);
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
	{
		uint64_t *d = (uint64_t *)counters;
		const uint64_t *s = (const uint64_t *)&local;
		for (size_t k = 0; k < sizeof(local) / 8; k++)
			d[k] += s[k];
	}
	*applied = i;
	return 0;
}
