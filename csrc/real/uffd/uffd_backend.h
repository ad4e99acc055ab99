/*
 * uffd_backend.h - real userspace dirty-page tracking on Linux for the "uffd"
 * backend (internal; not installed). Three modes track stores into ordinary
 * anonymous memory the caller owns:
 *
 *   KD_UFFD_ASYNC     userfaultfd WP_ASYNC + WP_UNPOPULATED: the kernel
 *                     resolves write faults itself; PAGEMAP_SCAN with
 *                     PM_SCAN_WP_MATCHING reports written pages and
 *                     re-protects them in one walk. Linux >= 6.7.
 *   KD_UFFD_SYNC      classic uffd-wp: a handler thread receives each write
 *                     fault, un-protects the page (UFFDIO_WRITEPROTECT) and
 *                     records it in a bitmap. Linux >= 5.7 (uses
 *                     WP_UNPOPULATED when present, else pre-faults the range).
 *   KD_UFFD_MPROTECT  mprotect(PROT_READ) + a process-wide SIGSEGV handler
 *                     that records the page and makes it writable. One
 *                     tracker in this mode per process at a time (-EBUSY).
 *                     The handler is installed on first open and stays
 *                     (it passes faults outside tracked ranges to the
 *                     previous handler); a handler installed later that
 *                     does not chain to it breaks this mode. Each dirty
 *                     page may cost two VMAs: past vm.max_map_count a fault
 *                     widens to its 64-page group, then to the whole slot
 *                     (over-reported, counted in fallbacks); if even that
 *                     needs a split - the slot shares a VMA with a
 *                     neighbouring mapping of the same protection and
 *                     flags - the store gets the previous SIGSEGV
 *                     disposition. Stores by the kernel (read(2) into
 *                     tracked memory) fail with EFAULT instead of faulting.
 *
 * Conventions: 0 or a negative errno; a failed call changes nothing (see
 * uffd_collect.c for the one documented exception, a rollback that can only
 * over-report). Pages are 4 KiB. Slots are identified by the caller's id
 * (the VM uses as_id << 16 | id); ranges of different slots may not overlap.
 *
 * Concurrency: any number of threads may store into tracked memory while
 * kd_uffd_collect runs; add/remove/collect/stats serialise on a per-tracker
 * lock. A slot's memory must not be stored to while that slot is being
 * removed, and must stay mapped until it is removed (memslot rule of
 * kvmdirty/vm.h).
 */
#ifndef KD_UFFD_BACKEND_H
#define KD_UFFD_BACKEND_H

#include <stdint.h>

enum kd_uffd_mode {
	KD_UFFD_ASYNC = 0,    /* WP_ASYNC + WP_UNPOPULATED, PAGEMAP_SCAN */
	KD_UFFD_SYNC = 1,     /* classic uffd-wp with a handler thread */
	KD_UFFD_MPROTECT = 2, /* mprotect + SIGSEGV handler */
};

/*
 * Open flag, or'ed into mode for kd_uffd_open (tests only): in sync mode do
 * not use UFFD_FEATURE_WP_UNPOPULATED even if the kernel has it, pre-fault
 * each added range instead (the path taken on kernels before 6.4).
 */
#define KD_UFFD_F_NO_UNPOPULATED (1u << 16)

struct kd_uffd;

/*
 * 0 if `mode` works here (checked by opening a tracker and catching one store
 * on a scratch page), else a negative errno and *why (may be NULL) = a static
 * sentence naming the missing feature. The result is cached per mode.
 */
int kd_uffd_probe(uint32_t mode, const char **why);

/* -EINVAL bad mode; -EBUSY mprotect tracker already open; kernel errors. */
int kd_uffd_open(uint32_t mode, struct kd_uffd **out);
/* Stops tracking every range (memory becomes plainly writable); NULL ok. */
void kd_uffd_close(struct kd_uffd *u);

/*
 * Track [mem, mem + size) as slot `slot`: a page-aligned private anonymous
 * mapping owned by the caller (e.g. mmap MAP_NORESERVE). Starts
 * write-protected: the first store to each page afterwards is reported;
 * contents are kept. -EINVAL unaligned/empty/NULL; -EEXIST slot id in use or
 * range overlaps another slot; kernel errors (e.g. -EINVAL from
 * UFFDIO_REGISTER for a mapping it cannot track).
 */
int kd_uffd_add_range(struct kd_uffd *u, uint32_t slot, void *mem,
		      uint64_t size);
/* Stop tracking slot `slot`; its memory becomes plainly writable. -ENOENT. */
int kd_uffd_remove_range(struct kd_uffd *u, uint32_t slot);

/*
 * Report the pages of slot `slot` in [first_page, first_page + num_pages)
 * written since they were last collected, as a KVM-layout bitmap (bit i =
 * page first_page + i; ALIGN(num_pages, 64) / 64 words, all written, bits
 * past num_pages zero) and re-protect exactly those pages. first_page need
 * not be a multiple of 64. A store that races with the call is reported by
 * this call or a later one; a store after this call returns is reported by a
 * later one. *reprotected (may be NULL) = pages re-protected.
 * -ENOENT no such slot; -EINVAL range past the slot end or NULL bitmap.
 */
int kd_uffd_collect(struct kd_uffd *u, uint32_t slot, uint64_t first_page,
		    uint64_t num_pages, uint64_t *bitmap,
		    uint64_t *reprotected);

struct kd_uffd_stats {
	uint64_t faults;            /* write faults seen (sync/mprotect; 0 in async) */
	uint64_t scans;             /* kd_uffd_collect calls that walked a range */
	uint64_t ioctls;            /* ioctl/mprotect calls made for tracking */
	uint64_t pages_reprotected; /* pages write-protected again by collect */
	uint64_t fallbacks;         /* mprotect mode: a VMA split failed
				     * (vm.max_map_count); pages were left
				     * writable and marked dirty instead */
};
void kd_uffd_stats_get(struct kd_uffd *u, struct kd_uffd_stats *out);

#endif /* KD_UFFD_BACKEND_H */
