/*
 * vm/write.c - kd_write: a guest entry on one vCPU. Checks the vCPU and
 * every gfn once (all or nothing), then the backend applies the batch
 * (emu/wp_write.c for the emulated logs, real stores or KVM_RUN for the real
 * ones) and its counters are published for kd_stats_get. The call is one
 * read-side section over the memslots (core/slots.c).
 */
#include "core/backend.h"

/*
 * All or nothing: every gfn must be in a writable slot of address space 0.
 * Blocks whose min and max fall in the slot of the previous block (the
 * common case: one big slot) are checked with a vectorisable min/max.
 */
#define VALIDATE_BLOCK 64
static int validate(const struct kd_memslots *t, const uint64_t *gfns, uint64_t n)
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
			s = kd_slot_lookup_near(t, s, gfns[i + j]);
			if (!s || (s->flags & KD_MEM_READONLY))
				return -EFAULT;
		}
	}
	return 0;
}

/* Publish a call's counters: the vCPU's thread is their only writer. */
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
	/* One read-side section (core/slots.c): validate and write see the
	 * same table, and nothing it reaches is freed before we leave. */
	kd_memslots_enter(vm, v);
	r = validate(v->memslots, gfns, n);
	if (r)
		goto out;
	r = vm->ops->write(vm, v, gfns, n, value, &c, &applied, &exit_reason);
	counters_add(&v->c, &c);
	res->applied = applied;
	res->exit_reason = exit_reason;
	res->write_faults = c.write_faults;
	res->pml_entries = c.pml_entries;
	res->pml_flushes = c.pml_flushes;
	res->ring_pushes = c.ring_pushes;
	res->ring_full_exits = c.ring_full_exits;
out:
	kd_memslots_exit(v);
	__atomic_store_n(&v->busy, 0, __ATOMIC_RELEASE);
	return r;
}
