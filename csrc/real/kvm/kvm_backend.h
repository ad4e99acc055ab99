/*
 * kvm_backend.h - the real /dev/kvm backend (internal; not installed).
 *
 * The module drives a real KVM VM: user memslots backed by anonymous mmap'd
 * memory (kvm_slots.c), the classic and manual-protect dirty bitmap and the
 * per-vCPU dirty ring (kvm_dirty.c), VM and vCPU creation (kvm_open.c) and
 * the guest runs (kvm_run.c). kvm_guest.c holds the tiny 64-bit CPL3 guest program
 * that performs kd_kvm_write's stores, its GDT/TSS, register setup and the
 * identity-mapping page tables.
 *
 * Conventions: every int function returns 0 or a negative errno; the
 * kernel's errno passes through unchanged. A failed call changes nothing
 * visible to the caller (the backend's own internal memslot may have moved,
 * which the caller cannot observe).
 *
 * Concurrency: kd_kvm_write may run concurrently on different vCPUs and with
 * get/clear/harvest/reset; one thread per vCPU (-EBUSY otherwise). Memslot
 * calls wait for running writes (a rwlock: writes are readers). Harvest of
 * one vCPU's ring serialises on a per-ring mutex.
 *
 * The internal memslot: guest code, GDT/TSS, page tables and one command
 * area per vCPU live in one memslot WITHOUT dirty logging, owned by the
 * backend; the last page of its reserved range is left out of the memslot
 * (the guest's MMIO "exit page"). It takes the highest slot id in address space 0 not used by the
 * user and a free gap of guest-physical space near the top of what the guest
 * can address; when a user call names its id or overlaps its range it is
 * first moved (delete + re-create on the same host memory), so user-visible
 * results are the kernel's as if it did not exist. Only if the user holds
 * all 32764 ids of address space 0 can it not move (-ENOSPC).
 */
#ifndef KD_KVM_BACKEND_H
#define KD_KVM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvmdirty/vm.h"

struct kd_kvm;

/*
 * NULL if /dev/kvm is usable here (opened, API 12, a VM can be created),
 * else a static sentence such as "/dev/kvm: No such file or directory".
 * Computed once per process.
 */
const char *kd_kvm_unavailable_reason(void);

/*
 * Create a VM with nvcpus vCPUs (1..KD_MAX_VCPUS, else -EINVAL).
 * ring_entries == 0: bitmap mode. Else the dirty ring is enabled with
 * ring_entries * 16 bytes (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, or
 * KVM_CAP_DIRTY_LOG_RING where ACQ_REL is missing) before the vCPUs exist and
 * each vCPU's ring is mmap'd; the kernel's errno of the enable (EINVAL for a
 * size that is not a power of two or too small, E2BIG too large) is returned
 * as is. -errno of open("/dev/kvm") (ENOENT, EACCES, ...) if unusable;
 * -ENODEV on hosts other than Linux x86-64.
 */
int kd_kvm_open(uint32_t nvcpus, uint32_t ring_entries, struct kd_kvm **out);
/* NULL is a no-op. No call may be running on k. Frees all slot memory. */
void kd_kvm_close(struct kd_kvm *k);

/*
 * KVM_SET_USER_MEMORY_REGION, slot = as_id << 16 | id. Creating a slot
 * mmaps (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE) zeroed host memory for
 * it; size 0 deletes the slot and unmaps its memory; changing flags (or
 * moving the base, which KVM allows) keeps the memory. Errors are the
 * kernel's; -ENOMEM only if mmap itself fails for a size the kernel would
 * accept.
 */
int kd_kvm_set_user_memory_region(struct kd_kvm *k, uint32_t slot,
				  uint32_t flags, uint64_t gpa, uint64_t size);
/* Host memory of a user slot. -ENOENT if no such slot. */
int kd_kvm_slot_memory(struct kd_kvm *k, uint32_t slot, void **host,
		       uint64_t *size);
/* KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags). */
int kd_kvm_enable_manual_protect(struct kd_kvm *k, uint64_t flags);

/*
 * Run the guest on vCPU `vcpu`: it stores the 8-byte `value` at offset 0 of
 * page gfns[i] (address space 0), i in order, then exits through a store
 * to its exit page (KVM_EXIT_MMIO).
 * Large n is split into runs of KD_KG_CMD_MAX gfns.
 *
 * Before anything runs, every gfn is checked: -EFAULT if one is in no user
 * slot of address space 0 or in a read-only slot (as the emulator);
 * -ERANGE if it is in a slot but at or above what the guest can address
 * (2^min(MAXPHYADDR, 48)); -ENOMEM if the page-table pool is exhausted
 * (see kvm_guest.c); in all these cases nothing is stored.
 *
 * *applied = stores completed. On KVM_EXIT_DIRTY_RING_FULL it stops with
 * *exit_reason = KD_EXIT_DIRTY_RING_FULL and *applied = exactly the stores
 * completed, counting the store whose write fault pushed the entry that
 * reached the soft limit: the kernel exits before that store is retried, so
 * the host completes it through its own mapping (the page is already in the
 * ring) and the next call starts after it. While the ring stays full every
 * call returns *applied = 0 with the same exit. The caller resumes by
 * passing the remaining gfns (gfns + *applied) in its next call; every call
 * restarts the guest program on a fresh command. Any other exit: -EIO
 * (*applied = stores completed before it; the next call reloads all vCPU
 * state). -EBUSY if another thread runs the vCPU; -EINVAL bad vcpu or NULL
 * pointers.
 */
int kd_kvm_write(struct kd_kvm *k, uint32_t vcpu, const uint64_t *gfns,
		 uint64_t n, uint64_t value, uint64_t *applied,
		 uint32_t *exit_reason);

/* KVM_GET_DIRTY_LOG; bitmap holds ALIGN(npages, 64) / 64 words. */
int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t *bitmap);
/* KVM_CLEAR_DIRTY_LOG. */
int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t first_page,
			   uint32_t num_pages, const uint64_t *bitmap);

/*
 * Copy the vCPU's ring entries whose flags == DIRTY, in ring order from the
 * vCPU's harvest index, into out (at most cap), marking each RESET
 * (load-acquire flags, copy, store-release RESET). -EINVAL: not a ring VM,
 * bad vcpu, NULL pointers.
 */
int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn *out,
			uint64_t cap, uint64_t *count);
/* The vCPU's mmap'd ring. -EINVAL: not a ring VM or bad vcpu. */
int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t vcpu,
			struct kd_dirty_gfn **entries, uint32_t *nentries);
/* KVM_RESET_DIRTY_RINGS; *count = its return value (entries reset). */
int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *count);
/* Address spaces the kernel offers (KVM_CAP_MULTI_ADDRESS_SPACE, at least 1). */
uint32_t kd_kvm_address_spaces(const struct kd_kvm *k);

/* Diagnostics for tests: where the internal slot is now. */
struct kd_kvm_internal_info {
	uint32_t slot;      /* id in address space 0 */
	uint32_t moves;     /* relocations (moves and page-table rebuilds) */
	uint64_t gpa;       /* guest-physical base */
	uint64_t size;      /* bytes */
	uint64_t addr_limit; /* guest can address [0, addr_limit) */
	uint32_t maxphyaddr; /* from KVM_GET_SUPPORTED_CPUID */
	uint32_t gbpages;    /* 1 GiB guest pages used (else 2 MiB) */
	uint32_t pt_pages_used; /* page-table pages handed out from the pool */
	uint32_t pt_pages_cap;
};
int kd_kvm_internal_info(struct kd_kvm *k, struct kd_kvm_internal_info *out);

/* ---- kvm_guest.c: the guest program and its machine state ---- */

/* Internal-slot layout (byte offsets from its base). */
#define KD_KG_CODE_OFF 0x0000ull /* guest program */
#define KD_KG_GDT_OFF 0x1000ull  /* GDT, 7 descriptors */
#define KD_KG_TSS_OFF 0x1800ull  /* 64-bit TSS, 104 bytes */
#define KD_KG_PT_OFF 0x2000ull   /* page-table pool: PML4 first */
#define KD_KG_PT_PAGES 8704u     /* 1 PML4 + up to 512 PDPT + 8191 PD pages */
#define KD_KG_CMD_OFF (KD_KG_PT_OFF + (uint64_t)KD_KG_PT_PAGES * 4096u)
#define KD_KG_CMD_BYTES 0x10000ull /* per vCPU */

/*
 * Command area of one vCPU (KD_KG_CMD_BYTES, little endian u64s): the host
 * fills value, n, index = 0 and list[0..n) (guest virtual addresses of the
 * target pages); the guest stores value at list[i] for i = index..n-1,
 * writing index = i + 1 after each store, then stores one byte to
 * exit_addr, the exit page: the last page of the internal range, which is
 * reserved like the rest but not registered in the memslot, so the store
 * is emulated as MMIO and the run ends with KVM_EXIT_MMIO.
 */
struct kd_kg_cmd {
	uint64_t value;
	uint64_t n;
	volatile uint64_t index; /* published by the guest after every store */
	uint64_t exit_addr;      /* guest address of the exit page (MMIO) */
	uint64_t pad[4];
	uint64_t list[];
};
#define KD_KG_CMD_MAX ((KD_KG_CMD_BYTES - 64u) / 8u)

/* Offsets of instructions the host must recognise in RIP. */
#define KD_KG_RIP_START 0u
#define KD_KG_RIP_STORE 21u   /* mov [rsi], rax: the store to a target page */
#define KD_KG_RIP_INC 24u     /* inc rdx: the store at index rdx is done */
#define KD_KG_RIP_PUBLISH 27u /* mov [rdi+16], rdx: rdx stores are done */
#define KD_KG_RIP_EXIT 37u    /* mov [rsi], al: the MMIO store that exits */

extern const uint8_t kd_kg_code[];
extern const size_t kd_kg_code_len;

/*
 * Page tables. Guest virtual addresses are limited to the lower half,
 * [0, 2^47): measured here (PVM), a CPL3 store to an upper-half address
 * triple-faults even with U/S set. Guest-physical space below 2^47 is
 * identity mapped (va == gpa; the internal slot always lies there); a 1 GiB
 * region at or above 2^47 (reachable when MAXPHYADDR is 48) is mapped at an
 * "alias" region of the lower half that no user slot covers (the backend
 * picks it and drops all aliases when a slot later lands on one).
 *
 * Mappings use 2 MiB pages (or 1 GiB pages when the vCPU's CPUID has
 * pdpe1gb; here it does not), every entry with P, RW, U/S and A set, leaves
 * also D, so the guest never writes its tables. Tables live in the pool at
 * KD_KG_PT_OFF of the internal slot; a 1 GiB region is mapped on first use
 * (kd_kg_pt_map). Invariant: an entry goes only from not present to present
 * while vCPUs may run, and a present entry is never changed or reused until
 * kd_kg_pt_reset, which the backend calls only when it re-creates the
 * internal memslot (KVM then drops every shadow page of the old tables)
 * with no vCPU running.
 */
#define KD_KG_VA_LIMIT (1ull << 47)
struct kd_kg_pt {
	uint8_t *host;      /* host address of the internal slot */
	uint64_t base;      /* its guest-physical base */
	uint64_t limit;     /* guest-physical addresses mapped: [0, limit) */
	bool gbpages;
	uint32_t used;      /* pool pages handed out, PML4 included */
};
void kd_kg_pt_reset(struct kd_kg_pt *pt, uint8_t *host, uint64_t base,
		    uint64_t limit, bool gbpages);
/* true if the 1 GiB region holding guest virtual address va is mapped
 * (lock-free read). */
bool kd_kg_pt_mapped(const struct kd_kg_pt *pt, uint64_t va);
/* Map the 1 GiB virtual region holding va to the 1 GiB physical region
 * holding gpa (no-op if va's region is mapped already). -ERANGE gpa >= limit
 * or va >= KD_KG_VA_LIMIT; -ENOMEM pool full (nothing changed). Callers
 * serialise (a mutex); the guest and kd_kg_pt_mapped may walk concurrently. */
int kd_kg_pt_map(struct kd_kg_pt *pt, uint64_t va, uint64_t gpa);

struct kvm_sregs;
struct kvm_regs;
/* Write the GDT and TSS into the internal slot at host/base. */
void kd_kg_write_gdt(uint8_t *host, uint64_t base);
/* Long mode, paging, CPL3 segments, TR; keeps the other fields of *s. */
void kd_kg_sregs(struct kvm_sregs *s, uint64_t base);
/* RIP = program start, RDI = command area gpa, IOPL 3, interrupts off. */
void kd_kg_regs(struct kvm_regs *r, uint64_t base, uint64_t cmd_gpa);

#endif /* KD_KVM_BACKEND_H */
