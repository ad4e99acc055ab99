/*
 * emu/emu.h - what the emulated backends (flat, two-level, byte map, ring,
 * hier) share: their config checks, the write-protect / PML write path, the
 * logs' operations, and the defaults of their ops tables. Emulated code
 * includes the core and this header, never a real backend.
 */
#ifndef KD_EMU_H
#define KD_EMU_H

#include "core/backend.h"
#include "emu/dirty_ring.h"
#include "emu/hier_log.h"

/* emu/common.c: guest memory with KD_VM_GUEST_MEMORY, else none. */
int kd_emu_slot_memory(kd_vm *vm, struct kd_slot *s);
/* Config checks of a bitmap backend (flat, two-level, byte map, hier). */
int kd_emu_check_config(const struct kd_vm_config *cfg);

/* emu/wp_write.c: the guest side (write protection or PML). */
int kd_emu_write(kd_vm *vm, struct kd_vcpu *v, const uint64_t *gfns, uint64_t n,
		 uint64_t value, struct kd_vcpu_counters *c, uint64_t *applied,
		 uint32_t *exit_reason);
/* Drain one vCPU's PML buffer into the logs; caller holds v->lock. */
void kd_pml_flush(kd_vm *vm, struct kd_vcpu *v);
/* Kick every vCPU (PML drain); no-op under write protection. */
void kd_kick_all_vcpus(kd_vm *vm);

/* The ops every emulated backend shares. */
#define KD_EMU_COMMON_OPS                               \
	.region_prepare = kd_region_check,              \
	.slot_memory = kd_emu_slot_memory,              \
	.slot_memory_free = kd_slot_memory_free,        \
	.log_free = kd_slot_log_free,                   \
	.kick = kd_kick_all_vcpus,                      \
	.write = kd_emu_write

/* emu/flat.c: the flat log, also the kernel side of two-level and byte map. */
/* The kernel bitmap and the protection state of a slot whose log is being
 * enabled (all set with KD_INITIALLY_SET, which leaves pages writable). */
int kd_flat_log_alloc(kd_vm *vm, struct kd_slot *s);
/* Count the re-protection of a slot whose log was just enabled. */
void kd_emu_log_enabled(kd_vm *vm, struct kd_slot *s);
int kd_flat_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap);
int kd_flat_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
		  const uint64_t *mask);

/* emu/twolevel.c: writer side, after the leaf bit is set (see twolevel.c). */
static inline void kd_twolevel_mark_summary(struct kd_slot *s, uint64_t rel)
{
	uint64_t chunk = rel / KD_CHUNK_PAGES, bit = 1ull << (chunk & 63);
	/* test before set: a hot chunk does not bounce the summary line */
	if (!(__atomic_load_n(&s->summary[chunk >> 6], __ATOMIC_SEQ_CST) & bit))
		__atomic_fetch_or(&s->summary[chunk >> 6], bit, __ATOMIC_SEQ_CST);
}

/*
 * Mark a page dirty in the slot's kernel log after a fault (or PML drain).
 * Where the log lives says what to do: a ring VM's slots have no bitmap
 * (the vCPU's ring is the log), a two-level slot has a summary too, a hier
 * slot its own log (emu/hier_log.h).
 */
static inline void kd_log_mark(struct kd_vcpu *v, struct kd_slot *s, uint64_t rel)
{
	if (s->hier) {
		kd_hier_mark(s->hier, rel);
		return;
	}
	if (!s->dirty) {
		kd_ring_push(&v->ring, s->id, rel);
		return;
	}
	__atomic_fetch_or(&s->dirty[rel >> 6], 1ull << (rel & 63), __ATOMIC_SEQ_CST);
	if (s->summary)
		kd_twolevel_mark_summary(s, rel);
}

#endif /* KD_EMU_H */
