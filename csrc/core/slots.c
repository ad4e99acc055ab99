/*
 * core/slots.c - the slot table of each address space, shared by every
 * backend: slots by id (user side, under vm->lock) and a published table
 * sorted by base_gfn that writers binary-search without locks.
 *
 * Memslots vs writers: the equivalent of KVM's SRCU-protected memslots
 * (virt/kvm/kvm_main.c, kvm_swap_active_memslots + synchronize_srcu).
 *
 *  - A table (struct kd_memslots) is immutable once published, and so is
 *    every struct kd_slot in it except its log words: a memslot change
 *    builds a new table, with a new copy of the slot it changes
 *    (vm/memslot.c), and publishes it with one seq_cst exchange.
 *  - Readers: kd_write is the only lock-free reader. Its read-side section
 *    (kd_memslots_enter .. kd_memslots_exit) makes the vCPU's srcu_seq odd
 *    (seq_cst increment), loads the table once (seq_cst) into v->memslots,
 *    uses only that table and the slots, logs and memory it points to, and
 *    leaves with a release increment (even again). A section is one
 *    kd_write call: bounded, it never waits for the updater or vm->lock.
 *  - The updater (a memslot change, under vm->lock, so one at a time)
 *    WAITS FOR THE READERS, never the other way round: after publishing it
 *    reads every vCPU's srcu_seq and, for each one that is odd, waits until
 *    it changes (that section has ended; a section entered after the
 *    publish sees the new table: the exchange and the reader's increment
 *    and load are seq_cst, so a reader whose increment the updater missed
 *    loads the new table). That is the grace period (kd_memslots_install);
 *    only after it does the updater kick the vCPUs (PML entries name the
 *    slot they were logged against), and free the old table, a deleted
 *    slot (its log and memory), a disabled log or a replaced slot copy.
 *  - Writers never wait for memslot changes: a write sees the old table or
 *    the new one, never freed memory; a gfn in neither slot is -EFAULT.
 *    Writer pools still hold the VM (kd_vm_hold: memslot changes -EBUSY)
 *    because their gfn lists are checked once, against one layout.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>

#include "core/internal.h"
#include "core/mapping.h"

int kd_slot_id_check(const kd_vm *vm, uint32_t slot)
{
	if ((slot >> 16) >= vm->cfg.address_spaces || (slot & 0xffff) >= KD_USER_MEM_SLOTS)
		return -EINVAL;
	return 0;
}

struct kd_slot *kd_slot_by_id(kd_vm *vm, uint32_t slot)
{
	struct kd_aspace *as;

	if (kd_slot_id_check(vm, slot))
		return NULL;
	as = &vm->as[slot >> 16];
	return as->by_id ? as->by_id[slot & 0xffff] : NULL;
}

int kd_slot_find(kd_vm *vm, uint32_t slot, bool need_log, struct kd_slot **out)
{
	if (kd_slot_id_check(vm, slot))
		return -EINVAL;
	*out = kd_slot_by_id(vm, slot);
	if (!*out || (need_log && !(*out)->logging))
		return -ENOENT;
	return 0;
}

bool kd_slot_overlaps(kd_vm *vm, uint32_t id, uint64_t base, uint64_t npages)
{
	const struct kd_memslots *t = kd_memslots(vm, id >> 16);

	for (uint32_t i = 0; t && i < t->n; i++) {
		struct kd_slot *s = t->s[i];
		if (s->id == id)
			continue;
		if (base < s->base_gfn + s->npages && s->base_gfn < base + npages)
			return true;
	}
	return false;
}

void kd_memslots_enter(kd_vm *vm, struct kd_vcpu *v)
{
	__atomic_fetch_add(&v->srcu_seq, 1, __ATOMIC_SEQ_CST);
	v->memslots = kd_memslots(vm, 0);
}

void kd_memslots_exit(struct kd_vcpu *v)
{
	v->memslots = NULL;
	__atomic_fetch_add(&v->srcu_seq, 1, __ATOMIC_RELEASE);
}

/* The grace period: every section that was open when the caller published
 * has ended. Sections are short (one kd_write) and never wait for us. */
static void synchronize(kd_vm *vm)
{
	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		unsigned long *seq = &vm->vcpus[i].srcu_seq;
		unsigned long s0 = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
		unsigned spins = 0;

		if (!(s0 & 1))
			continue;
		while (__atomic_load_n(seq, __ATOMIC_ACQUIRE) == s0) {
			if (++spins < 64)
				continue;
			sched_yield(); /* the writer may share our core */
		}
	}
}

int kd_slot_reserve(kd_vm *vm, uint32_t slot)
{
	struct kd_aspace *as = &vm->as[slot >> 16];

	if (!as->by_id) {
		as->by_id = calloc(KD_USER_MEM_SLOTS, sizeof(*as->by_id));
		if (!as->by_id)
			return -ENOMEM;
	}
	return 0;
}

struct kd_memslots *kd_memslots_replace(kd_vm *vm, uint32_t as_id, const struct kd_slot *old,
					struct kd_slot *new)
{
	const struct kd_memslots *cur = kd_memslots(vm, as_id);
	uint32_t n = cur ? cur->n : 0, k = 0;
	struct kd_memslots *t = malloc(sizeof(*t) + (n + 1) * sizeof(t->s[0]));

	if (!t)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		struct kd_slot *s = cur->s[i];
		if (s == old)
			continue;
		if (new && s->base_gfn > new->base_gfn) {
			t->s[k++] = new;
			new = NULL;
		}
		t->s[k++] = s;
	}
	if (new)
		t->s[k++] = new;
	t->n = k;
	return t;
}

void kd_memslots_install(kd_vm *vm, uint32_t as_id, struct kd_memslots *t, uint32_t id,
			 struct kd_slot *s)
{
	struct kd_aspace *as = &vm->as[as_id];
	struct kd_memslots *old;

	as->by_id[id & 0xffff] = s;
	old = __atomic_exchange_n(&as->slots, t, __ATOMIC_SEQ_CST);
	synchronize(vm);
	free(old);
}

void kd_aspace_free(struct kd_aspace *as)
{
	free(as->by_id);
	free(as->slots);
	memset(as, 0, sizeof(*as));
}

void kd_slot_log_free(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	if (s->writable != s->dirty)
		kd_bitmap_free(s->writable, s->nwords);
	kd_bitmap_free(s->dirty, s->nwords);
	kd_pending_free(s);
	kd_bitmap_free(s->scratch, s->nwords);
	kd_bitmap_free(s->summary, s->nsummary);
	kd_pages_free(s->bytemap, s->npages);
	s->writable = s->dirty = s->scratch = s->summary = NULL;
	s->bytemap = NULL;
	s->nsummary = 0;
}

static void account(struct kd_log_memory *out, const void *p, uint64_t bytes)
{
	if (!p)
		return;
	out->reserved += kd_mapped_bytes(bytes);
	out->resident += kd_resident_bytes(p, bytes);
}

void kd_slot_log_memory(const struct kd_slot *s, struct kd_log_memory *out)
{
	if (s->writable != s->dirty)
		account(out, s->writable, s->nwords * 8);
	account(out, s->dirty, s->nwords * 8);
	account(out, s->summary, s->nsummary * 8);
	account(out, s->bytemap, s->npages);
	account(out, s->scratch, s->nwords * 8);
	account(out, s->pending, s->nwords * 8);
	account(out, s->pending_summary, s->npending_summary * 8);
}

int kd_slot_memory_alloc(kd_vm *vm, struct kd_slot *s)
{
	/* content-free model: 8 bytes of version per page, not its 4 KiB */
	s->versions = vm->cfg.flags & KD_VM_PAGE_VERSIONS;
	s->memory_bytes = s->versions ? s->npages * 8 : s->npages << KD_PAGE_SHIFT;
	s->memory = kd_pages_alloc(s->memory_bytes, false);
	if (!s->memory) {
		s->memory_bytes = 0;
		return -ENOMEM;
	}
	return 0;
}

void kd_slot_memory_free(kd_vm *vm, struct kd_slot *s)
{
	(void)vm;
	kd_pages_free(s->memory, s->memory_bytes);
	s->memory = NULL;
	s->memory_bytes = 0;
}
