/*
 * emu/hier.c - the "hier" backend: each logging slot's kernel log is the
 * hierarchical log of emu/hier_log.c (64-ary summaries over 2 MiB chunks,
 * leaf blocks from a lazily backed pool), behind KVM_GET_DIRTY_LOG (flat
 * layout out), KVM_CLEAR_DIRTY_LOG and collect, with KVM's semantics.
 *
 * Protection. Under write protection the leaf bit is the protection bit
 * (hier_log.c): there is no slot-sized writable bitmap, so the memory the
 * log commits follows the dirty pages. Under PML the D bits are a separate,
 * lazily backed writable bitmap, written by the generic PML path
 * (emu/wp_write.c), drained into the log by kd_log_mark.
 *
 * Writer sections. hier_log.c gives a clean block back only after every
 * writer that may still hold it has left its section. Here a section is a
 * vCPU's guest entry: the write hook holds v->lock per batch of
 * KD_WRITE_BATCH gfns (the PML path already does), and sync_writers takes
 * and drops every vCPU's lock, as KVM kicks the vCPUs out of guest mode.
 * Lock order: v->lock, then the log's own lock (a fault's block).
 */
#include <stdlib.h>

#include "emu/emu.h"

#define PREFETCH_AHEAD 64 /* index this far ahead, the leaf half as far */
#define PREFETCH_MIN_PAGES (1ull << 18) /* past 1 GiB (32 KiB of leaves) */

static void hier_sync_writers(void *ctx)
{
	kd_vm *vm = ctx;

	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		kd_spin_lock(vm->vcpus[i].lock);
		kd_spin_unlock(vm->vcpus[i].lock);
	}
}

static void hier_log_free(kd_vm *vm, struct kd_slot *s)
{
	if (s->hier) {
		kd_hier_destroy(s->hier);
		free(s->hier);
		s->hier = NULL;
	}
	kd_slot_log_free(vm, s);
}

static int hier_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	bool ones = vm->manual_protect & KD_INITIALLY_SET;
	int r;

	s->hier = malloc(sizeof(*s->hier));
	if (!s->hier)
		return -ENOMEM;
	r = kd_hier_init(s->hier, s->npages, ones, hier_sync_writers, vm);
	if (r) {
		free(s->hier);
		s->hier = NULL;
		return r;
	}
	if (vm->cfg.tracking == KD_TRACK_PML) {
		/* D bits: all set with INITIALLY_SET (a full bitmap then),
		 * else reserved and committed as pages get dirty */
		s->writable = ones ? kd_bitmap_alloc(s->nwords, true, s->npages)
				   : kd_pages_alloc(s->nwords * 8, false);
		if (!s->writable) {
			hier_log_free(vm, s);
			return -ENOMEM;
		}
		s->hier->writable = s->writable;
	}
	kd_emu_log_enabled(vm, s);
	return 0;
}

static void hier_log_memory(kd_vm *vm, struct kd_slot *s, struct kd_log_memory *out)
{
	(void)vm;
	kd_hier_memory(s->hier, &out->reserved, &out->resident);
}

static int hier_write(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
		      uint64_t value, struct kd_vcpu_counters *c, uint64_t *applied,
		      uint32_t *exit_reason)
{
	const bool mem = vm->cfg.flags & KD_VM_GUEST_MEMORY;
	struct kd_slot *s = NULL;
	struct kd_hier *h = NULL;
	/* locals, refreshed when the slot changes: c may alias the log, and
	 * the log's atomics keep the compiler from caching s's fields */
	uint64_t i = 0, faults = 0, untracked = 0, base = 0, npages = 0;
	bool prefetch = false;

	if (vm->cfg.tracking == KD_TRACK_PML) /* D bits, buffer, drain: generic */
		return kd_emu_write(vm, v, gfns, n, value, c, applied, exit_reason);
	while (i < n) {
		uint64_t stop = n - i > KD_WRITE_BATCH ? i + KD_WRITE_BATCH : n;
		kd_spin_lock(v->lock); /* guest entry: a writer section */
		for (; i < stop; i++) {
			uint64_t rel = gfns[i] - base;
			if (rel >= npages) { /* another slot (or the first) */
				s = kd_slot_lookup_near(v->memslots, s, gfns[i]);
				base = s->base_gfn;
				npages = s->npages;
				h = s->logging ? s->hier : NULL;
				rel = gfns[i] - base;
				/* a log that fits the caches gains nothing */
				prefetch = h && npages > PREFETCH_MIN_PAGES;
			}
			if (prefetch && i + PREFETCH_AHEAD < n) { /* random gfns miss in big slots */
				uint64_t ahead = gfns[i + PREFETCH_AHEAD] - base;
				uint64_t near = gfns[i + PREFETCH_AHEAD / 2] - base;
				if (ahead < npages)
					kd_hier_prefetch_index(h, ahead);
				if (near < npages)
					kd_hier_prefetch_leaf(h, near);
			}
			if (mem)
				kd_slot_store(s, rel, value);
			if (!h) {
				untracked++;
				continue;
			}
			faults += kd_hier_write(h, rel, mem);
		}
		kd_spin_unlock(v->lock);
	}
	c->writes += i;
	c->write_faults += faults;
	c->untracked_writes += untracked;
	*applied = i;
	*exit_reason = 0;
	return 0;
}

static void account(kd_vm *vm, const struct kd_hier_counts *c, bool o1_capable)
{
	vm->user.words_scanned += c->words_scanned;
	vm->user.summary_words_scanned += c->summary_words_scanned;
	kd_count_reprotect(vm, c->reprotected, o1_capable);
}

static int hier_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	struct kd_hier_counts c = {0};

	kd_hier_get(s->hier, bitmap, vm->manual_protect != 0, &c);
	account(vm, &c, true);
	return 0;
}

static int hier_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
		      const uint64_t *mask)
{
	struct kd_hier_counts c = {0};

	kd_hier_clear(s->hier, first, num, mask, &c);
	account(vm, &c, false);
	return 0;
}

static int hier_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	struct kd_hier_counts c = {0};

	*count = kd_hier_collect(s->hier, first, end, s->base_gfn, gfns, cap, resume, &c);
	account(vm, &c, false);
	return 0;
}

const struct kd_backend_ops kd_hier_ops = {
	.name = "hier",
	.has_bitmap = true,
	.check_config = kd_emu_check_config,
	.region_prepare = kd_region_check,
	.slot_memory = kd_emu_slot_memory,
	.slot_memory_free = kd_slot_memory_free,
	.log_alloc = hier_log_alloc,
	.log_free = hier_log_free,
	.log_memory = hier_log_memory,
	.kick = kd_kick_all_vcpus,
	.write = hier_write,
	.get_dirty_log = hier_get,
	.clear_dirty_log = hier_clear,
	.collect = hier_collect,
};
