/*
 * real/kvm/kvm_internal.h - what the files of the /dev/kvm backend share:
 * the kernel constants, the VM's state (struct kd_kvm) with its locks and
 * its own slot table, and the functions each file offers the others.
 * Internal; kvm_backend.h is the module's API.
 *
 * Why the module keeps its own slot table rather than the core's
 * (core/slots.c): it must be usable alone (tests/c/test_kvm_backend.c
 * drives it without a kd_vm); it must hold the kernel's state at every step
 * of a call, including while it moves its internal slot out of the way of
 * a request the generic table has not seen yet; it is read by KVM_RUN
 * callers under its own rwlock; and it records the host mapping it made
 * for each slot, which it alone unmaps.
 */
#ifndef KD_KVM_INTERNAL_H
#define KD_KVM_INTERNAL_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvm_backend.h"

#if defined(__linux__) && defined(__x86_64__)
#define KD_KVM_NATIVE 1

#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* Values from Documentation/virt/kvm/api.rst, in case <linux/kvm.h> is old. */
#ifndef KVM_CAP_DIRTY_LOG_RING
#define KVM_CAP_DIRTY_LOG_RING 192
#endif
#ifndef KVM_CAP_DIRTY_LOG_RING_ACQ_REL
#define KVM_CAP_DIRTY_LOG_RING_ACQ_REL 223
#endif
#ifndef KVM_EXIT_DIRTY_RING_FULL
#define KVM_EXIT_DIRTY_RING_FULL 31
#endif
#ifndef KVM_DIRTY_LOG_PAGE_OFFSET
#define KVM_DIRTY_LOG_PAGE_OFFSET 64 /* x86: arch/x86/include/uapi/asm/kvm.h */
#endif

_Static_assert(sizeof(struct kd_dirty_gfn) == sizeof(struct kvm_dirty_gfn),
	       "kd_dirty_gfn must have KVM's layout");

#define PAGE 4096ull
#define TWO_MB (2ull << 20)
#define MAX_IDS 32768u          /* slot ids are 16 bits */
#define USER_SLOTS 32764u       /* KVM_USER_MEM_SLOTS on x86 */
#define MAX_NR_PAGES 0x7fffffffull /* KVM_MEM_MAX_NR_PAGES */
#define KNOWN_FLAGS (KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)

/* A user memslot. host/size never change while it exists. */
struct uslot {
	uint32_t slot; /* as_id << 16 | id */
	uint32_t flags;
	uint64_t gpa;
	uint64_t size;
	void *host;
};

struct vcpu {
	int fd;
	struct kvm_run *run;
	struct kd_dirty_gfn *ring; /* mmap'd from fd, ring_entries entries */
	uint32_t fetch;            /* next ring entry to harvest (ring_lock) */
	pthread_mutex_t ring_lock;
	int busy;                  /* a thread is in kd_kvm_write (atomic) */
	uint32_t gen;              /* layout generation its sregs reflect */
};

struct kd_kvm {
	int sys_fd, vm_fd;
	uint32_t nvcpus, ring_entries, as_num;
	size_t run_size;
	struct vcpu *v;
	struct kvm_cpuid2 *cpuid;

	/*
	 * slots_lock: writes hold it shared, memslot calls exclusive; so the
	 * slot tables, the internal slot's place and a present page-table
	 * entry never change while the guest runs.
	 */
	pthread_rwlock_t slots_lock;
	struct uslot **byid;  /* [as_id * MAX_IDS + id], as_id < 2 */
	struct uslot **as0;   /* address-space-0 slots sorted by gpa */
	uint32_t nas0, cap_as0;

	/* The internal slot: never overlaps a user slot of AS 0, never shares
	 * its id. ihost/isize fixed for the VM's life. */
	uint8_t *ihost;
	uint64_t isize, igpa;
	uint32_t iid;
	bool ivalid;   /* currently registered with KVM */
	uint32_t gen;  /* bumped whenever it moves (vCPUs reload sregs) */
	uint32_t moves;
	pthread_mutex_t pt_lock; /* serialises kd_kg_pt_map and the alias table */
	struct kd_kg_pt pt;
	/* Aliases of 1 GiB regions at or above 2^47 (see kvm_backend.h), sorted
	 * by gregion; under pt_lock; emptied by relocate. Invariant: no AS-0
	 * user slot overlaps an alias's virtual region. */
	struct alias {
		uint64_t gregion, vregion; /* gpa >> 30, va >> 30 */
	} *alias;
	uint32_t nalias, cap_alias;
	uint64_t addr_limit; /* guest reaches [0, addr_limit) */
	uint32_t maxphy;
	bool gbpages;
};

/* kvm_slots.c: the slot tables (change: slots_lock held exclusively) and
 * the internal slot. */
/* Index of the first AS-0 slot with gpa > addr. */
uint32_t kvm_as0_upper(struct kd_kvm *k, uint64_t addr);
struct uslot *kvm_as0_lookup(struct kd_kvm *k, uint64_t gpa);
/* Choose an id and gpa for the internal slot avoiding every AS-0 user slot
 * and avoid_id / [avoid_lo, avoid_hi). */
int kvm_place_internal(struct kd_kvm *k, int64_t avoid_id, uint64_t avoid_lo,
		       uint64_t avoid_hi, uint32_t *id_out, uint64_t *gpa_out);
/* Re-register the internal slot at id/gpa with fresh page tables. */
int kvm_relocate(struct kd_kvm *k, uint32_t id, uint64_t gpa);
#else
#define KD_KVM_NATIVE 0
#endif

#endif /* KD_KVM_INTERNAL_H */
