/*
 * core/internal.h - the VM's data structures and the core's helpers, shared
 * by every layer above (emu/, real/, vm/); not installed. The core includes
 * nothing above itself: backends see each other only through struct
 * kd_backend_ops (core/backend.h).
 *
 * Ownership and concurrency, in one place:
 *  - vm->lock serialises every "user side" call (memslots, get, clear,
 *    collect, harvest, reset, stats reset). Writers (kd_write) never take it.
 *  - The memslots a writer sees: each address space publishes an immutable
 *    table (struct kd_memslots); kd_write reads it inside a per-vCPU
 *    read-side section and a memslot change publishes a new table and waits
 *    for the sections that may still see the old one before freeing any
 *    slot, log or memory (SRCU, core/slots.c says who waits for whom).
 *  - A vCPU is run by one thread at a time (vcpu->busy). Its counters are
 *    written only by that thread and read with relaxed loads; a stats reset
 *    never writes them (it moves a baseline instead, see struct kd_vcpu).
 *  - vcpu->lock guards what both a writer and a collector may touch for one
 *    vCPU: its PML buffer and the producer side of its dirty ring. A writer
 *    holds it per batch of KD_WRITE_BATCH gfns (a "guest entry"); a collector
 *    takes it to drain the buffer (a "kick").
 *  - Log words are plain uint64_t updated with __atomic builtins (seq_cst
 *    read-modify-writes); readers that only need a snapshot use plain loads.
 */
#ifndef KD_INTERNAL_H
#define KD_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/bits.h"
#include "core/ticket_lock.h"
#include "kvmdirty/vm.h"

/* Nothing declared here is exported: the library is built with
 * -fvisibility=hidden (csrc/build.mk) and only KD_API marks the public API. */
#define KD_WRITE_BATCH 256u
#define KD_CHUNK_WORDS (KD_CHUNK_PAGES / 64u)

struct kd_backend_ops;
struct kd_hier;

/* One memslot. Immutable for writers once published in a table, but for
 * its logs' words: a change of flags or base is a new copy of the struct
 * (vm/memslot.c), as KVM copies a kvm_memory_slot. */
struct kd_slot {
	uint32_t id; /* as_id << 16 | slot id */
	uint32_t flags;
	uint64_t base_gfn;
	uint64_t npages;
	uint64_t nwords; /* ALIGN(npages, 64) / 64 */
	bool logging;    /* KD_MEM_LOG_DIRTY_PAGES set */

	/*
	 * Kernel side. writable: bit set = the page's spte is writable (write
	 * protect) or has its D bit set (PML); a write to such a page costs
	 * nothing and logs nothing. Invariant: writable => the page's dirty
	 * bit is set, is about to be set by the writer that set writable, or
	 * was just taken by a collector that will clear writable next. Hence a
	 * writer sets writable BEFORE the dirty bit, and a collector clears
	 * writable only for bits it took from the log.
	 */
	uint64_t *writable;
	/*
	 * With write protection and a kernel bitmap (flat, two-level, byte map)
	 * writable == dirty: in every KVM bitmap mode a page is writable exactly
	 * when its dirty bit is set (a fault sets both; GET, CLEAR and collect
	 * protect exactly the bits they take; INITIALLY_SET sets both), so one
	 * word and one atomic serve both and taking a bit re-protects its page.
	 * PML (D bit set before the log is) and the ring (no bitmap) keep a
	 * separate writable bitmap.
	 */
	uint64_t *dirty;   /* flat/two-level/byte-map leaf bitmap, KVM layout */
	uint64_t *summary; /* two-level: bit c = chunk c (512 pages) may be dirty */
	uint64_t nsummary; /* summary words */
	struct kd_hier *hier; /* hier backend: the whole log (emu/hier_log.h) */

	/* User side. */
	uint8_t *bytemap;  /* byte map backend: one byte per page, client bits */
	uint64_t *scratch; /* GET_DIRTY_LOG / PAGEMAP_SCAN target (byte map, kvm, uffd) */
	uint64_t *pending; /* kernel-reported, not yet collected (pending.c) */
	uint64_t *pending_summary;
	uint64_t npending_summary;

	void *memory; /* guest memory (KD_VM_GUEST_MEMORY), else NULL */
	uint64_t memory_bytes;
	bool versions; /* KD_VM_PAGE_VERSIONS: memory is a uint64 version per page */
};

/* An address space's slots sorted by base_gfn: immutable once published. */
struct kd_memslots {
	uint32_t n;
	struct kd_slot *s[];
};

/* Address space: slots by id (under vm->lock), and the published table
 * writers look gfns up in (core/slots.c). */
struct kd_aspace {
	struct kd_slot **by_id; /* KD_USER_MEM_SLOTS entries, lazily allocated */
	struct kd_memslots *slots; /* NULL: no slot; replaced whole, never edited */
};

/* A PML buffer entry: the slot (of the table the write saw) and the page.
 * The slot stays valid until drained: a memslot change kicks every vCPU
 * after its grace period, before it frees a retired slot. */
struct kd_pml_entry {
	struct kd_slot *s;
	uint64_t rel;
};

/* Per-vCPU dirty ring (KVM's virt/kvm/dirty_ring.c; the emulated ring buffer
 * and its state machine: emu/dirty_ring.h). */
struct kd_ring {
	struct kd_dirty_gfn *entries;
	uint32_t size;        /* entries, power of two */
	uint32_t soft_limit;  /* size - reserved */
	uint32_t dirty_index; /* producer: next entry to fill */
	uint32_t reset_index; /* kernel reset: next entry to recycle */
	uint32_t fetch_index; /* user side: next entry to harvest */
};

struct kd_vcpu_counters {
	uint64_t writes, untracked_writes, write_faults, pml_entries, pml_flushes,
		ring_pushes, ring_full_exits;
};

struct kd_vcpu {
	uint32_t index;
	int busy;           /* a thread is in kd_write on this vCPU */
	/* read-side section: odd while kd_write may use `memslots` (slots.c) */
	unsigned long srcu_seq;
	const struct kd_memslots *memslots; /* address space 0, inside the section */
	unsigned lock[2];   /* ticket lock (core/ticket_lock.h), see top of file */
	uint32_t pml_count; /* entries in pml[] */
	struct kd_pml_entry pml[KD_PML_ENTRIES];
	struct kd_ring ring;
	/*
	 * Writer-side counters, monotonic: only the thread running the vCPU
	 * stores them (relaxed atomic stores of load + delta, once per
	 * kd_write); anyone reads them with relaxed loads. kd_stats_reset may
	 * run while that thread writes, so it must not store to them (its store
	 * could land between the writer's load and store and be overwritten,
	 * or lose the writer's delta): it copies them into `base` instead,
	 * under vm->lock, and kd_stats_get reports c - base. Each field then
	 * counts exactly the events the writer published after the reset read
	 * that field (fields are read one by one, so a kd_write racing with the
	 * reset may be counted in some fields and not in others, never twice
	 * and never lost).
	 */
	struct kd_vcpu_counters c;
	struct kd_vcpu_counters base; /* under vm->lock */
} __attribute__((aligned(64)));

struct kd_vm {
	struct kd_vm_config cfg;
	uint64_t manual_protect; /* KD_MANUAL_PROTECT_ENABLE | KD_INITIALLY_SET */
	struct kd_aspace as[KD_ADDRESS_SPACES];
	struct kd_vcpu *vcpus;
	struct kd_stats user; /* user-side counters, under lock */
	const struct kd_backend_ops *ops; /* the backend (core/backend.h) */
	void *backend;                    /* its private state (kvm, uffd) */
	uint32_t holds; /* kd_vm_hold count: memslots frozen while > 0 */
	int lock_initialised;
	/* pthread mutex kept opaque here to avoid pulling pthread.h everywhere */
	_Alignas(16) unsigned char lock_storage[64];
};

/* core/lock.c: the VM lock (the vCPU locks: core/ticket_lock.h) */
void kd_vm_lock(kd_vm *vm);
void kd_vm_unlock(kd_vm *vm);

/* core/counters.c */
/* Count pages write-protected again (or one generation bump with O(1)). */
void kd_count_reprotect(kd_vm *vm, uint64_t pages, bool o1_capable);

/* core/slots.c: the slot table of each address space */
struct kd_slot *kd_slot_by_id(kd_vm *vm, uint32_t slot);
/* The slot of table t holding gfn, or NULL: a binary search over the
 * sorted, non-overlapping slots (inline, as KVM's search_memslots). */
static inline struct kd_slot *kd_slot_by_gfn(const struct kd_memslots *t, uint64_t gfn)
{
	uint32_t lo = 0, hi = t ? t->n : 0;

	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		struct kd_slot *s = t->s[mid];
		if (gfn < s->base_gfn)
			hi = mid;
		else if (gfn - s->base_gfn >= s->npages)
			lo = mid + 1;
		else
			return s;
	}
	return NULL;
}
/* The published table of an address space (under vm->lock: the current one). */
static inline const struct kd_memslots *kd_memslots(kd_vm *vm, uint32_t as_id)
{
	return __atomic_load_n(&vm->as[as_id].slots, __ATOMIC_SEQ_CST);
}
/* kd_write's read-side section on vCPU v: enter loads the table of address
 * space 0 into v->memslots, valid until exit. */
void kd_memslots_enter(kd_vm *vm, struct kd_vcpu *v);
void kd_memslots_exit(struct kd_vcpu *v);
int kd_slot_id_check(const kd_vm *vm, uint32_t slot);
/* The slot an id names, in KVM's order: -EINVAL bad id, -ENOENT no slot
 * (with need_log: or no dirty log on it). Under vm->lock. */
int kd_slot_find(kd_vm *vm, uint32_t slot, bool need_log, struct kd_slot **out);
/* Another slot of the address space overlapping [base, base + npages)? */
bool kd_slot_overlaps(kd_vm *vm, uint32_t slot, uint64_t base, uint64_t npages);
/* The by-id array of slot's address space (-ENOMEM). */
int kd_slot_reserve(kd_vm *vm, uint32_t slot);
/* A new table: the current one with old replaced by new (either may be NULL;
 * same id), sorted by base_gfn; NULL on ENOMEM. Under vm->lock. */
struct kd_memslots *kd_memslots_replace(kd_vm *vm, uint32_t as_id,
					const struct kd_slot *old, struct kd_slot *new);
/* Publish t (and by_id) in place of the current table, wait until no
 * read-side section can still see the old one (the grace period), free it.
 * Under vm->lock; returns with every retired slot unreachable by writers. */
void kd_memslots_install(kd_vm *vm, uint32_t as_id, struct kd_memslots *t,
			 uint32_t id, struct kd_slot *s);
void kd_aspace_free(struct kd_aspace *as);
/* Free every log and user-side map of the slot (NULL fields are skipped). */
void kd_slot_log_free(kd_vm *vm, struct kd_slot *s);
/* Adds the slot's generic log arrays (bitmaps, summary, byte map, scratch,
 * pending) to *out: reserved bytes and resident ones (mincore). */
void kd_slot_log_memory(const struct kd_slot *s, struct kd_log_memory *out);
/* Guest memory owned by the library (anonymous, MAP_NORESERVE). */
int kd_slot_memory_alloc(kd_vm *vm, struct kd_slot *s);
void kd_slot_memory_free(kd_vm *vm, struct kd_slot *s);

/* core/region_check.c: KVM_SET_USER_MEMORY_REGION's checks, KVM's order. */
int kd_region_check(kd_vm *vm, uint32_t slot, uint32_t flags, uint64_t gpa,
		    uint64_t size);

/* core/bitmap.c: allocation and scanning helpers */
uint64_t *kd_bitmap_alloc(uint64_t nwords, bool ones, uint64_t nbits);
void kd_bitmap_free(uint64_t *bm, uint64_t nwords);
void *kd_pages_alloc(uint64_t bytes, bool populate);
void kd_pages_free(void *p, uint64_t bytes);
/* First index in [from, to) with w[i] != 0, or `to`. */
uint64_t kd_find_nonzero_word(const uint64_t *w, uint64_t from, uint64_t to);
/* First index in [from, to) with b[i] & bit, or `to`. */
uint64_t kd_find_byte_with(const uint8_t *b, uint64_t from, uint64_t to, uint8_t bit);

/* core/pending.c: pages reported by the kernel but not yet collected (the
 * emulated ring and both real backends park what a collect brought in) */
int kd_pending_alloc(struct kd_slot *s);
/* A real backend's user-side maps of a logging slot: pending, and scratch (the
 * GET / PAGEMAP_SCAN target, s->nwords words); freed by kd_slot_log_free. */
int kd_pending_scratch_alloc(struct kd_slot *s);
void kd_pending_free(struct kd_slot *s);
void kd_pending_or(struct kd_slot *s, uint64_t w, uint64_t bits);
void kd_pending_or_bitmap(struct kd_slot *s, const uint64_t *bm);
/* Take the pending pages of [first, end) into gfns (sorted), stopping at a
 * 64-page boundary when fewer than 64 places are left. */
uint64_t kd_pending_take(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			 uint64_t *gfns, uint64_t cap, uint64_t *resume);

/* core/ring_collect.c: collect on a ring VM (emulated or real): harvest
 * every vCPU's ring with `fetch` into the slots' pending sets, reset the
 * rings (vm->ops->ring_reset), take the range from pending. */
typedef int (*kd_ring_fetch_fn)(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out,
				uint64_t cap, uint64_t *count);
int kd_ring_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		    uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume,
		    kd_ring_fetch_fn fetch);

/* Slot of gfn in table t, trying `last` (the previous gfn's) first. */
static inline struct kd_slot *kd_slot_lookup_near(const struct kd_memslots *t,
						  struct kd_slot *last, uint64_t gfn)
{
	if (last && gfn - last->base_gfn < last->npages)
		return last;
	return kd_slot_by_gfn(t, gfn);
}

/* A guest store: value into the first 8 bytes of page rel of the slot, or
 * (content-free model) as the page's version. */
static inline void kd_slot_store(struct kd_slot *s, uint64_t rel, uint64_t value)
{
	uint64_t *at = s->versions ? (uint64_t *)s->memory + rel
				   : (uint64_t *)((char *)s->memory + (rel << KD_PAGE_SHIFT));
	__atomic_store_n(at, value, __ATOMIC_RELAXED);
}

/* Re-protect (clear writable) the pages in `bits` of word w; returns count. */
static inline uint64_t kd_reprotect_word(struct kd_slot *s, uint64_t w, uint64_t bits)
{
	if (!bits)
		return 0;
	if (s->writable != s->dirty) /* else taking the bits protected them */
		__atomic_fetch_and(&s->writable[w], ~bits, __ATOMIC_SEQ_CST);
	return (uint64_t)__builtin_popcountll(bits);
}

#endif /* KD_INTERNAL_H */

