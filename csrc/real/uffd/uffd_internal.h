/*
 * real/uffd/uffd_internal.h - what the files of the uffd tracker share: the
 * kernel constants newer than some system headers, the tracker and its
 * slot table, and the functions each file offers the others. Internal.
 *
 * The one invariant every mode keeps (the same as the emulated write
 * protection in core/internal.h):
 *
 *   a tracked page is writable only if (a) its write since the last collect
 *   is recorded, or (b) the thread that made it writable is about to record
 *   it, or (c) a collector took its record and will re-protect it before it
 *   returns.
 *
 * async:    the kernel keeps it: the uffd-wp bit of the pte is the record
 *           (clear = written), and PAGEMAP_SCAN with PM_SCAN_WP_MATCHING
 *           reads and sets it under the page-table lock, one walk.
 * sync and  a fault handler records the page in the slot's `dirty` bitmap
 * mprotect: BEFORE it makes the page writable, so that a store that has
 *           completed is always visible to a collect started after it (the
 *           final collect of a stopped guest must see every store). A
 *           collector takes bits with an atomic fetch_and and re-protects
 *           exactly the pages it took before returning. The race to close:
 *           handler sets the bit, collector takes it and re-protects,
 *           handler un-protects -> writable, bit clear, later stores lost.
 *   sync:     handler (set bit + un-protect) and collector (take bits +
 *             re-protect them) each run under fault_lock, so they cannot
 *             interleave; the collector holds it per batch of 64 words.
 *   mprotect: a signal handler cannot take a lock the interrupted thread
 *             may hold, so after mprotect(RW) it re-reads the bit and sets
 *             it again if a collector took it meanwhile. If that collector
 *             re-protected after our mprotect, the page is read-only and
 *             the faulting store simply faults again; otherwise the page is
 *             writable with its bit set. Either way nothing is lost and the
 *             re-set bit belongs to the store about to happen.
 *
 * Slot tables are immutable and replaced whole (copy on write) so fault
 * handlers - the sync handler thread and the SIGSEGV handler, which may not
 * take locks - read them lock-free: a reader increments a counter, loads the
 * table, uses it, decrements; a writer publishes a new table and waits for
 * the counter to reach zero before freeing the old one (all seq_cst).
 */
#ifndef KD_UFFD_INTERNAL_H
#define KD_UFFD_INTERNAL_H

/* every file defines _GNU_SOURCE before any include */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/fs.h>
#include <linux/userfaultfd.h>

#include "uffd_backend.h"

/*
 * Constants newer than some system headers (Debian 12 ships 6.1 uapi
 * headers). Values from Linux include/uapi/linux/userfaultfd.h and
 * include/uapi/linux/fs.h (v6.7+, unchanged since).
 */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* v6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15) /* v6.7 */
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1 /* v5.11 */
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC 0xAA /* /dev/userfaultfd, v6.1 */
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef PAGEMAP_SCAN /* v6.7, include/uapi/linux/fs.h */
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)   /* write-protect the pages matched */
#define PM_SCAN_CHECK_WPASYNC (1 << 1) /* fail on pages without async WP */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end; /* written by the kernel: where the walk stopped */
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};
#endif

#define PG_SHIFT 12
#define PG_SIZE 4096ull
#define SCAN_VEC_LEN 4096u /* page_regions per PAGEMAP_SCAN call (96 KiB) */
#define NMODES 3u

/* A tracked range: the host memory of one slot (kd_uffd_add_range). Not
 * kvm's struct uslot (a KVM memslot): the two backends share no type. */
struct uffd_range {
	uint32_t id;
	uintptr_t start, end; /* [start, end), page aligned */
	uint64_t npages;
	uint64_t nwords;
	/* sync/mprotect: bit i set = page i written and not yet collected
	 * (updated only with __atomic read-modify-writes); NULL in async */
	uint64_t *dirty;
};

/* Immutable once published; s[] sorted by start, ranges disjoint. */
struct utable {
	uint32_t n;
	struct uffd_range *s[];
};

struct kd_uffd {
	uint32_t mode;
	int uffd;    /* -1 in mprotect mode */
	int pagemap; /* /proc/self/pagemap, async only */
	int stopfd;  /* eventfd that stops the sync handler thread */
	bool prefault; /* sync without WP_UNPOPULATED */
	bool thread_started;
	pthread_t thread;
	pthread_mutex_t lock; /* serialises add/remove/collect/close */
	pthread_mutex_t fault_lock; /* sync: handler vs collector, see top */
	struct utable *table; /* __atomic loads/stores */
	unsigned readers;     /* sync handler thread inside the table */
	struct page_region *vec; /* async scan output, under lock */
	struct kd_uffd_stats st; /* __atomic relaxed adds */
};

/* ---- small helpers ---- */

static inline void stat_add(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

static inline void set_bit(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

/* Mask of bits [lo, hi) of one word, 0 <= lo < hi <= 64. */
static inline uint64_t word_mask(unsigned lo, unsigned hi)
{
	uint64_t m = hi == 64 ? ~0ull : (1ull << hi) - 1;
	return m & ~((1ull << lo) - 1);
}

/* Record pages [p0, p1) of s as dirty. */
static inline void mark_dirty(struct uffd_range *s, uint64_t p0, uint64_t p1)
{
	while (p0 < p1) {
		uint64_t w = p0 / 64;
		unsigned hi = p1 - w * 64 >= 64 ? 64 : (unsigned)(p1 - w * 64);
		__atomic_fetch_or(&s->dirty[w], word_mask(p0 % 64, hi), __ATOMIC_SEQ_CST);
		p0 = w * 64 + hi;
	}
}

/* uffd_table.c: the slot table, immutable once published (see the top;
 * publishing and waiting for readers: uffd_backend.c). */
struct uffd_range *uffd_table_find_addr(const struct utable *t, uintptr_t a);
struct uffd_range *uffd_table_find_id(const struct utable *t, uint32_t id);
/* A copy of old with s added (add) or removed (!add); NULL on ENOMEM. */
struct utable *uffd_table_build(const struct utable *old, struct uffd_range *s,
				bool add);

/* uffd_segv.c: the process-wide SIGSEGV handler of the mprotect mode. */
/* Make u the one mprotect tracker of the process (-EBUSY if there is one),
 * installing the handler on first use; release gives the place back. */
int uffd_mp_claim(struct kd_uffd *u);
void uffd_mp_release(struct kd_uffd *u);
/* SIGSEGV handlers running inside the tracker now. */
unsigned uffd_mp_inflight(void);

/* uffd_fd.c: userfaultfd plumbing and the sync mode's handler thread. */
/* New userfaultfd (O_CLOEXEC | O_NONBLOCK), or -errno and *why. */
int uffd_create(const char **why);
/* Supported features (cached); -errno if userfaultfd cannot be opened. */
int uffd_features(uint64_t *features, const char **why);
int uffd_writeprotect(struct kd_uffd *u, uintptr_t start, uint64_t len,
		      bool wp);
/* Body of the sync handler thread (arg: the tracker). */
void *uffd_sync_thread(void *arg);

#endif /* KD_UFFD_INTERNAL_H */
