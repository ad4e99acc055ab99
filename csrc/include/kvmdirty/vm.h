/*
 * kvmdirty/vm.h - the VM API of libkvmdirty, a dirty-page-tracking
 * kernel-interface emulator; the base every other public header builds on
 * (kvmdirty/migrate.h declares the send path, the wire format, workload
 * generators and vCPU thread pools on it). C users include kvmdirty.h, which
 * includes both. Sources: csrc/vm/ over csrc/core/, csrc/emu/, csrc/real/.
 *
 * A kd_vm holds memslots and vCPUs like a KVM VM. Guest writes (kd_write) go
 * through an emulated write-protection (or PML) model into one of several
 * dirty-log backends; the user side collects the log (KVM_GET_DIRTY_LOG /
 * KVM_CLEAR_DIRTY_LOG semantics, the dirty ring, or a sorted gfn list).
 *
 * Conventions:
 *  - every function returning int returns 0 (or a count where documented) on
 *    success and a negative errno on failure; a failed call changes nothing;
 *  - no call aborts on bad input; NULL handles or buffers give -EINVAL
 *    (-EFAULT where KVM would fail to copy a user buffer);
 *  - kd_write may run concurrently with every collector call; one thread per
 *    vCPU at a time (-EBUSY otherwise, as KVM serialises KVM_RUN per vCPU);
 *    collector and memslot calls serialise on a per-VM lock; memslot changes
 *    must not race with kd_write on the same VM (KVM uses SRCU for that).
 */
#ifndef KVMDIRTY_VM_H
#define KVMDIRTY_VM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KD_API
#else
#define KD_API __attribute__((visibility("default")))
#endif

#define KD_VERSION_MAJOR 0
#define KD_VERSION_MINOR 1
#define KD_VERSION_PATCH 0
#define KD_VERSION_STRING "0.1.0"

/* Geometry. */
#define KD_PAGE_SHIFT 12
#define KD_PAGE_SIZE 4096u
#define KD_CHUNK_PAGES 512u          /* two-level: one summary bit per 2 MiB */
#define KD_MAX_SLOT_PAGES 0x7fffffffull /* KVM_MEM_MAX_NR_PAGES */
#define KD_USER_MEM_SLOTS 32764u     /* x86: KVM_MEM_SLOTS_NUM - 3 internal */
#define KD_ADDRESS_SPACES 2u         /* x86: normal and SMM */
#define KD_MAX_GFN ((1ull << 40) - 1) /* x86 kvm_mmu_max_gfn(): 52 address bits */

/* Memslot flags, as KVM's. */
#define KD_MEM_LOG_DIRTY_PAGES (1u << 0)
#define KD_MEM_READONLY (1u << 1)

/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags. */
#define KD_MANUAL_PROTECT_ENABLE (1ull << 0)
#define KD_INITIALLY_SET (1ull << 1)

/* Dirty ring, as KVM's. */
#define KD_DIRTY_GFN_F_DIRTY (1u << 0)
#define KD_DIRTY_GFN_F_RESET (1u << 1)
#define KD_RING_RESERVED_ENTRIES 64u
#define KD_RING_MAX_ENTRIES 65536u
#define KD_PML_ENTRIES 512u

/* Exit reasons reported by kd_write (KVM_EXIT_* numbers). */
#define KD_EXIT_NONE 0u
#define KD_EXIT_DIRTY_RING_FULL 31u

/* QEMU 2010 byte-map client bits. */
#define KD_CLIENT_VGA 0x01u
#define KD_CLIENT_CODE 0x02u
#define KD_CLIENT_MIGRATION 0x08u

enum kd_backend {
	KD_BACKEND_FLAT = 0,     /* 1 bit per page, KVM_GET_DIRTY_LOG */
	KD_BACKEND_TWOLEVEL = 1, /* leaf bitmap + summary bit per 2 MiB */
	KD_BACKEND_BYTEMAP = 2,  /* flat kernel log + QEMU 2010 byte map */
	KD_BACKEND_RING = 3,     /* per-vCPU dirty rings */
	KD_BACKEND_KVM = 4,      /* the real kernel through /dev/kvm */
	KD_BACKEND_UFFD = 5,     /* userfaultfd WP_ASYNC + PAGEMAP_SCAN */
	KD_BACKEND_HIER = 6,     /* 64-ary summaries over 2 MiB chunks, pooled leaves */
};

enum kd_tracking {
	KD_TRACK_WRITE_PROTECT = 0, /* first write after protection faults
				       (uffd: userfaultfd WP_ASYNC + PAGEMAP_SCAN) */
	KD_TRACK_PML = 1,           /* first write appends to a PML buffer */
	KD_TRACK_UFFD_SYNC = 2,     /* uffd only: uffd-wp with a fault-handler thread */
	KD_TRACK_MPROTECT = 3,      /* uffd only: mprotect + SIGSEGV handler */
};

/* kd_vm_config.flags */
#define KD_VM_O1_PROTECT (1u << 0)   /* re-protect by generation bump */
#define KD_VM_GUEST_MEMORY (1u << 1) /* back slots with memory; writes store */
/*
 * With KD_VM_GUEST_MEMORY: the content-free page model. A slot's memory is
 * one 64-bit version per page (8 bytes, not 4 KiB), 0 = a zero page, mapped
 * MAP_NORESERVE so that only the 4 KiB blocks of versions a write touches
 * cost memory; a write stores its value as the page's version. Emulated
 * backends only (the real kvm and uffd backends need real pages: -EINVAL).
 */
#define KD_VM_PAGE_VERSIONS (1u << 2)

struct kd_vm_config {
	uint32_t backend;      /* enum kd_backend */
	uint32_t nvcpus;       /* 1..KD_MAX_VCPUS */
	uint32_t ring_entries; /* ring backends: power of two, KVM bounds */
	uint32_t tracking;     /* enum kd_tracking */
	uint32_t flags;        /* KD_VM_* */
	uint32_t address_spaces; /* 1..KD_ADDRESS_SPACES; 0 = default (2, x86 with
				    SMM; on kvm, what the kernel reports) */
	uint32_t reserved[2];  /* must be zero */
};
#define KD_MAX_VCPUS 256u

/* struct kvm_dirty_gfn: 16 bytes, slot = as_id << 16 | id, offset = gfn - base. */
struct kd_dirty_gfn {
	uint32_t flags;
	uint32_t slot;
	uint64_t offset;
};

struct kd_write_result {
	uint64_t applied;     /* gfns written, in order, before any exit */
	uint32_t exit_reason; /* KD_EXIT_NONE or KD_EXIT_DIRTY_RING_FULL */
	uint32_t pad;
	/* what this call cost the guest: the write-side events it caused (the
	 * same events kd_stats counts, for this call and this vCPU only) */
	uint64_t write_faults, pml_entries, pml_flushes, ring_pushes, ring_full_exits;
};

struct kd_collect_result {
	uint64_t count;       /* gfns stored */
	uint64_t resume_page; /* slot-relative page to resume from; == end when done */
	uint64_t sampled_ns;  /* CLOCK_MONOTONIC when the log was sampled */
};

struct kd_collect_slots_result {
	uint64_t count;        /* gfns stored */
	uint32_t resume_index; /* index into slots[] to resume from; == nslots when done */
	uint32_t pad;
	uint64_t resume_page;  /* page of slots[resume_index] to resume from (0 when done) */
	uint64_t sampled_ns;   /* CLOCK_MONOTONIC when the first slot was sampled */
};

struct kd_slot_info {
	uint32_t slot; /* as_id << 16 | id */
	uint32_t flags;
	uint64_t base_gfn;
	uint64_t npages;
	void *memory; /* guest memory of the slot, or NULL */
};

/*
 * Event counters: what the kernel (and the user side) paid. Writer-side
 * counters are summed over vCPUs when read.
 */
struct kd_stats {
	uint64_t writes;             /* gfns written by kd_write */
	uint64_t untracked_writes;   /* writes to slots without a dirty log */
	uint64_t write_faults;       /* first write after (re)protection */
	uint64_t pml_entries;        /* PML buffer appends */
	uint64_t pml_flushes;        /* PML buffer drains (full exit or kick) */
	uint64_t ring_pushes;        /* dirty-ring entries produced */
	uint64_t ring_full_exits;    /* KVM_EXIT_DIRTY_RING_FULL reported */
	uint64_t pages_reprotected;  /* pages write-protected (or D bit cleared) again */
	uint64_t protect_bumps;      /* O(1) re-protections (generation bumps) */
	uint64_t tlb_flushes;        /* one per call that re-protected anything */
	uint64_t words_scanned;      /* 64-bit log words read by get/clear/collect */
	uint64_t summary_words_scanned; /* two-level summary words read */
	uint64_t bytemap_bytes_scanned; /* byte-map bytes read */
	uint64_t ring_harvested;     /* entries harvested (RESET set) */
	uint64_t ring_reset;         /* entries recycled by reset */
	uint64_t get_calls;
	uint64_t clear_calls;
	uint64_t collect_calls;
	uint64_t pages_collected;    /* gfns returned by collect */
	uint64_t reserved[13];
};

typedef struct kd_vm kd_vm;

KD_API const char *kd_version(void);
/* CLOCK_MONOTONIC in ns: the clock of every timestamp the library reports. */
KD_API uint64_t kd_clock_ns(void);
/* Short name of a backend ("flat", ...), or NULL. */
KD_API const char *kd_backend_name(uint32_t backend);
/* 0 if the backend can run here, else a negative errno; *why (may be NULL)
 * gets a static sentence naming what is missing. */
KD_API int kd_backend_available(uint32_t backend, const char **why);

/* Create a VM. -EINVAL bad config; -E2BIG ring too large; -ENOMEM. */
KD_API int kd_vm_create(const struct kd_vm_config *config, kd_vm **out);
/* Destroy a VM; NULL is a no-op. No call may be running on it, and no
 * writer pool or workload threads (join/stop them first). */
KD_API void kd_vm_destroy(kd_vm *vm);
/* The VM's configuration, with defaults resolved (address_spaces). */
KD_API int kd_vm_config_get(const kd_vm *vm, struct kd_vm_config *out);

/*
 * Hold the VM's memslots: while the VM is held, kd_set_user_memory_region
 * fails with -EBUSY (before any other check), so the layout a thread pool
 * checked its gfns against stays. (kd_write itself is safe against any
 * memslot change, held or not: see kd_write.) The writer and workload
 * thread pools hold their VM from start to join/stop; a program running its
 * own writer threads may do the same. Holds nest (a count); each
 * kd_vm_hold is matched by one kd_vm_release. -EINVAL: NULL, or release
 * without a hold.
 */
KD_API int kd_vm_hold(kd_vm *vm);
KD_API int kd_vm_release(kd_vm *vm);

/*
 * KVM_SET_USER_MEMORY_REGION. slot = as_id << 16 | id. -EINVAL: unaligned
 * address/size, id >= KD_USER_MEM_SLOTS, as_id >= KD_ADDRESS_SPACES, more than
 * KD_MAX_SLOT_PAGES pages, unknown flags, a change of base or size of an
 * existing slot; -EEXIST: overlap. size 0 deletes. Toggling
 * KD_MEM_LOG_DIRTY_PAGES allocates a fresh log (zero, or all ones with
 * KD_INITIALLY_SET) or frees it. -EBUSY while the VM is held (kd_vm_hold:
 * a writer pool or workload threads of this VM run); nothing changes.
 */
KD_API int kd_set_user_memory_region(kd_vm *vm, uint32_t slot, uint32_t flags,
				     uint64_t guest_phys_addr, uint64_t memory_size);
KD_API int kd_slot_info(kd_vm *vm, uint32_t slot, struct kd_slot_info *out);
/*
 * Memory a slot's dirty log holds in this process: every array of the
 * emulated kernel log and of the user side (bitmaps, summaries, leaf pools,
 * GET scratch, pending maps). reserved: address space; resident: pages
 * present now (mincore), what a lazily backed log has really committed.
 * The real backends' kernel memory is not counted (KVM's bitmaps and rmap
 * live in the kernel). -EINVAL: bad slot id or NULL; -ENOENT: no slot, or
 * no dirty log on it.
 */
struct kd_log_memory {
	uint64_t reserved;
	uint64_t resident;
};
KD_API int kd_log_memory(kd_vm *vm, uint32_t slot, struct kd_log_memory *out);
/* Number of slots; fills up to cap entries sorted by (as_id, base_gfn). */
KD_API int kd_slot_list(kd_vm *vm, struct kd_slot_info *out, uint32_t cap);

/* KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): flags 0 (off),
 * KD_MANUAL_PROTECT_ENABLE, or both it and KD_INITIALLY_SET. -EINVAL
 * unknown flags, or KD_INITIALLY_SET alone (as the kernel). */
KD_API int kd_enable_manual_protect(kd_vm *vm, uint64_t flags);

/*
 * Guest writes by one vCPU to gfns in address space 0. With
 * KD_VM_GUEST_MEMORY, value is stored in the first 8 bytes of each page
 * (with KD_VM_PAGE_VERSIONS: as the page's version).
 * -EFAULT if any gfn is in no slot (nothing applied); -EINVAL bad vCPU;
 * -EBUSY if another thread runs this vCPU. On a ring VM, stops after the
 * push that fills the ring to its soft limit (exit_reason
 * KD_EXIT_DIRTY_RING_FULL) and writes nothing until the ring is reset.
 * May race any memslot call from another thread: the call sees the slot
 * table as it was before that change or after it, whole (KVM's SRCU: the
 * memslot call waits for kd_write calls in flight before it frees anything).
 */
KD_API int kd_write(kd_vm *vm, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		    uint64_t value, struct kd_write_result *res);

/*
 * KVM_GET_DIRTY_LOG into bitmap (ALIGN(npages, 64) / 64 words). Classic: get
 * and clear per word, re-protect the returned pages. Manual protect: copy.
 * -ENXIO on a ring VM; -ENOENT no slot or no log; -EINVAL bad slot id.
 */
KD_API int kd_get_dirty_log(kd_vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t nwords);
/*
 * kd_get_dirty_log into a buffer of cap words that also says the size of
 * the slot's bitmap at the time of the call: *nwords = ALIGN(npages, 64) /
 * 64, set on success and on -EFAULT for cap < *nwords (nothing taken: call
 * again with that many). A caller that races memslot changes needs no copy
 * of the slot's size.
 */
KD_API int kd_get_dirty_log_sized(kd_vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t cap,
				  uint64_t *nwords);

/* KVM_CLEAR_DIRTY_LOG, with KVM's checks in KVM's order. bitmap holds
 * ALIGN(num_pages, 64) / 64 words, bit i = page first_page + i. */
KD_API int kd_clear_dirty_log(kd_vm *vm, uint32_t slot, uint64_t first_page,
			      uint32_t num_pages, const uint64_t *bitmap);

/*
 * Collect and clear (re-protect) the dirty pages of [first_page, first_page +
 * num_pages) of a slot, as sorted gfns. Stops when gfns is full at a 64-page
 * boundary (cap must be >= 64 or >= num_pages); resume from resume_page.
 * Works on every backend (ring: harvest + reset, other slots' entries kept).
 */
KD_API int kd_collect(kd_vm *vm, uint32_t slot, uint64_t first_page, uint64_t num_pages,
		      uint64_t *gfns, uint64_t cap, struct kd_collect_result *res);

/*
 * kd_collect of several whole slots in one call (a guest-wide sync): the
 * slots in the order given, each collected with kd_collect's semantics, one
 * slot's sorted gfns after the previous slot's. Starts at slots[first_index]
 * page first_page (0 for a fresh sync); stops when gfns is full at a 64-page
 * boundary and says where to resume. Every slot id is checked (EINVAL, then
 * ENOENT for no slot or no log, in the order given) before any is touched;
 * EINVAL also for first_index > nslots, first_page past its slot, or
 * cap < 64 with more pages than cap left to walk.
 */
KD_API int kd_collect_slots(kd_vm *vm, const uint32_t *slots, uint32_t nslots,
			    uint32_t first_index, uint64_t first_page, uint64_t *gfns,
			    uint64_t cap, struct kd_collect_slots_result *res);

/* Ring: copy the vCPU's DIRTY entries in order into out, marking each RESET. */
KD_API int kd_ring_harvest(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn *out,
			   uint64_t cap, uint64_t *count);
/* Ring memory of a vCPU (what KVM lets user space mmap). */
KD_API int kd_ring_entries(kd_vm *vm, uint32_t vcpu, struct kd_dirty_gfn **entries,
			   uint32_t *nentries);
/* KVM_RESET_DIRTY_RINGS: recycle RESET entries; *count = entries reset. */
KD_API int kd_reset_dirty_rings(kd_vm *vm, uint64_t *count);
/* Entries in the vCPU's ring not yet reset, and the soft limit. */
KD_API int kd_ring_usage(kd_vm *vm, uint32_t vcpu, uint32_t *used, uint32_t *soft_limit);

KD_API int kd_stats_get(kd_vm *vm, struct kd_stats *out);
/* Zero the counters. May run while writers run: writer-side counters then
 * count exactly the writes published after the reset (a kd_write racing
 * with it may count in some fields only), never an old total. */
KD_API int kd_stats_reset(kd_vm *vm);

/* Scan a bitmap for set bits: stores base + index of each set bit (ascending)
 * into out (cap entries); returns the number of set bits found (may exceed
 * cap: only cap are stored). */
KD_API int64_t kd_bitmap_to_gfns(const uint64_t *bitmap, uint64_t nbits, uint64_t base,
				 uint64_t *out, uint64_t cap);

#ifdef __cplusplus
}
#endif

#endif /* KVMDIRTY_VM_H */
