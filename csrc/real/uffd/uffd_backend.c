/*
 * uffd_backend.c - real userspace dirty tracking for the "uffd" backend:
 * userfaultfd write-protect (async with PAGEMAP_SCAN, or sync with a handler
 * thread) and mprotect + SIGSEGV, over anonymous memory the caller owns.
 * See uffd_backend.h for the API.
 *
 * The one invariant every mode keeps (the same as the emulated write
 * protection in internal.h):
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
#define _GNU_SOURCE
#include "uffd_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/fs.h>
#include <linux/userfaultfd.h>

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

struct uslot {
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
	struct uslot *s[];
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

static void stat_add(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

static void set_bit(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

/* Mask of bits [lo, hi) of one word, 0 <= lo < hi <= 64. */
static uint64_t word_mask(unsigned lo, unsigned hi)
{
	uint64_t m = hi == 64 ? ~0ull : (1ull << hi) - 1;
	return m & ~((1ull << lo) - 1);
}

static struct uslot *table_find_addr(const struct utable *t, uintptr_t a)
{
	uint32_t lo = 0, hi = t ? t->n : 0;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct uslot *s = t->s[mid];
		if (a < s->start)
			hi = mid;
		else if (a >= s->end)
			lo = mid + 1;
		else
			return t->s[mid];
	}
	return NULL;
}

static struct uslot *table_find_id(const struct utable *t, uint32_t id)
{
	for (uint32_t i = 0; t && i < t->n; i++)
		if (t->s[i]->id == id)
			return t->s[i];
	return NULL;
}

/* ---- process-wide state of the mprotect mode ---- */

static pthread_mutex_t g_mp_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kd_uffd *g_mp_owner; /* the one mprotect tracker; __atomic */
static unsigned g_sig_inflight;    /* SIGSEGV handlers inside g_mp_owner */
static bool g_handler_installed;   /* under g_mp_lock; never uninstalled */
static struct sigaction g_old_segv; /* what we chain to */

/* Wait until no fault handler can still see a table or tracker that was
 * unpublished before this call. */
static void quiesce(struct kd_uffd *u)
{
	unsigned *ctr = u->mode == KD_UFFD_MPROTECT ? &g_sig_inflight : &u->readers;

	while (__atomic_load_n(ctr, __ATOMIC_SEQ_CST))
		sched_yield();
}

/* Record pages [p0, p1) of s as dirty. */
static void mark_dirty(struct uslot *s, uint64_t p0, uint64_t p1)
{
	while (p0 < p1) {
		uint64_t w = p0 / 64;
		unsigned hi = p1 - w * 64 >= 64 ? 64 : (unsigned)(p1 - w * 64);
		__atomic_fetch_or(&s->dirty[w], word_mask(p0 % 64, hi), __ATOMIC_SEQ_CST);
		p0 = w * 64 + hi;
	}
}

/* Pass a fault that is not ours to whoever handled SIGSEGV before us. */
static void chain_segv(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *o = &g_old_segv;

	if (o->sa_flags & SA_SIGINFO) {
		if (o->sa_sigaction) {
			o->sa_sigaction(sig, si, uc);
			return;
		}
	} else if (o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN) {
		o->sa_handler(sig);
		return;
	}
	/* default action: restore it; a real fault re-executes and kills us
	 * (the kernel also forces the default for an ignored fault signal) */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGSEGV, &dfl, NULL);
	if (si->si_code <= 0)
		raise(sig);
}

/*
 * The SIGSEGV handler of the mprotect mode. Async-signal-safe: atomics and
 * mprotect(2) only; saves errno. A write to a protected tracked page is
 * recorded and the page made writable (ordering at the top). When the kernel
 * cannot split the VMA (vm.max_map_count reached, ENOMEM) it widens to the
 * page's 64-page group, then to the whole slot: those pages are recorded
 * dirty (over-reported, never lost).
 */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	bool handled = false;

	__atomic_fetch_add(&g_sig_inflight, 1, __ATOMIC_SEQ_CST);
	struct kd_uffd *u = __atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST);
	if (u && si->si_code == SEGV_ACCERR) {
		uintptr_t a = (uintptr_t)si->si_addr;
		struct uslot *s = table_find_addr(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), a);
		if (s) {
			uint64_t p = (a - s->start) >> PG_SHIFT;
			uint64_t g0 = p & ~63ull, g1 = g0 + 64 < s->npages ? g0 + 64 : s->npages;
			/* record, make writable, record again if a collector
			 * took the bit meanwhile (see the top of the file) */
			stat_add(&u->st.ioctls, 1);
			mark_dirty(s, p, p + 1);
			if (!mprotect((void *)(s->start + (p << PG_SHIFT)), PG_SIZE,
				      PROT_READ | PROT_WRITE)) {
				mark_dirty(s, p, p + 1);
				handled = true;
			} else {
				mark_dirty(s, g0, g1);
				if (!mprotect((void *)(s->start + (g0 << PG_SHIFT)),
					      (g1 - g0) << PG_SHIFT, PROT_READ | PROT_WRITE)) {
					mark_dirty(s, g0, g1);
					handled = true;
				} else {
					mark_dirty(s, 0, s->npages);
					if (!mprotect((void *)s->start, s->end - s->start,
						      PROT_READ | PROT_WRITE)) {
						mark_dirty(s, 0, s->npages);
						handled = true;
					}
				}
				stat_add(&u->st.fallbacks, 1);
			}
			if (handled)
				stat_add(&u->st.faults, 1);
		}
	}
	__atomic_fetch_sub(&g_sig_inflight, 1, __ATOMIC_SEQ_CST);
	errno = saved;
	if (!handled)
		chain_segv(sig, si, uc);
}

/* Under g_mp_lock. */
static int install_segv_handler(void)
{
	struct sigaction sa;

	if (g_handler_installed)
		return 0;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &g_old_segv))
		return -errno;
	g_handler_installed = true;
	return 0;
}

/* ---- userfaultfd plumbing ---- */

/* New userfaultfd (O_CLOEXEC | O_NONBLOCK): the syscall, then the syscall
 * restricted to user-mode faults, then /dev/userfaultfd. */
static int uffd_create(const char **why)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int err = fd < 0 ? errno : 0;

	if (fd < 0 && err == EPERM)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
	}
	if (fd >= 0)
		return fd;
	if (why)
		*why = err == ENOSYS
			? "userfaultfd: system call not available (kernel without CONFIG_USERFAULTFD, or blocked)"
			: "userfaultfd: not permitted (vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE, and /dev/userfaultfd not accessible)";
	return err ? -err : -EPERM;
}

/* Supported features (UFFDIO_API with none requested on a throwaway fd),
 * cached; -errno if userfaultfd cannot be opened. */
static int uffd_features(uint64_t *features, const char **why)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static uint64_t cached;
	static bool known;
	struct uffdio_api api = {.api = UFFD_API, .features = 0};
	int fd, r = 0;

	pthread_mutex_lock(&lock);
	if (known)
		goto out;
	fd = uffd_create(why);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	if (ioctl(fd, UFFDIO_API, &api)) {
		r = -errno;
		if (why)
			*why = "userfaultfd: UFFDIO_API handshake failed";
	} else {
		cached = api.features;
		known = true;
	}
	close(fd);
out:
	*features = cached;
	pthread_mutex_unlock(&lock);
	return r;
}

static int uffd_writeprotect(struct kd_uffd *u, uintptr_t start, uint64_t len, bool wp)
{
	struct uffdio_writeprotect w = {
		.range = {.start = start, .len = len},
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	int r;

	do {
		stat_add(&u->st.ioctls, 1);
		r = ioctl(u->uffd, UFFDIO_WRITEPROTECT, &w);
	} while (r && (errno == EAGAIN || errno == EINTR));
	return r ? -errno : 0;
}

/* Sync mode: resolve one write fault: record, then un-protect (which wakes
 * the faulting thread), both under fault_lock. */
static void sync_fault(struct kd_uffd *u, uint64_t addr)
{
	uintptr_t page = (uintptr_t)addr & ~(uintptr_t)(PG_SIZE - 1);
	int r;

	pthread_mutex_lock(&u->fault_lock);
	__atomic_fetch_add(&u->readers, 1, __ATOMIC_SEQ_CST);
	struct uslot *s = table_find_addr(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), page);
	if (s)
		mark_dirty(s, (page - s->start) >> PG_SHIFT, ((page - s->start) >> PG_SHIFT) + 1);
	__atomic_fetch_sub(&u->readers, 1, __ATOMIC_SEQ_CST);
	r = uffd_writeprotect(u, page, PG_SIZE, false);
	pthread_mutex_unlock(&u->fault_lock);
	stat_add(&u->st.faults, 1);
	if (r) {
		/* range gone (unregistered: waiters already woken) or an
		 * unexpected error: wake the thread so it retries the store */
		struct uffdio_range wr = {.start = page, .len = PG_SIZE};
		ioctl(u->uffd, UFFDIO_WAKE, &wr);
	}
}

static void *sync_thread(void *arg)
{
	struct kd_uffd *u = arg;
	struct uffd_msg msgs[64];

	for (;;) {
		struct pollfd p[2] = {{.fd = u->uffd, .events = POLLIN},
				      {.fd = u->stopfd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL))
			break;
		ssize_t n = read(u->uffd, msgs, sizeof msgs);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			break;
		}
		for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				sync_fault(u, msgs[i].arg.pagefault.address);
	}
	return NULL;
}

/* ---- open / close ---- */

static void free_slot(struct uslot *s)
{
	if (s) {
		free(s->dirty);
		free(s);
	}
}

/* Stop protecting s (memory stays mapped, becomes plainly writable). */
static void unprotect_slot(struct kd_uffd *u, struct uslot *s)
{
	stat_add(&u->st.ioctls, 1);
	if (u->mode == KD_UFFD_MPROTECT) {
		mprotect((void *)s->start, s->end - s->start, PROT_READ | PROT_WRITE);
	} else {
		/* clears the wp bits and wakes any thread blocked on the range */
		struct uffdio_range r = {.start = s->start, .len = s->end - s->start};
		ioctl(u->uffd, UFFDIO_UNREGISTER, &r);
	}
}

KD_UFFD_HIDDEN void kd_uffd_close(struct kd_uffd *u)
{
	struct utable *t;

	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	t = __atomic_load_n(&u->table, __ATOMIC_SEQ_CST);
	for (uint32_t i = 0; t && i < t->n; i++)
		unprotect_slot(u, t->s[i]);
	if (u->mode == KD_UFFD_MPROTECT) {
		pthread_mutex_lock(&g_mp_lock);
		if (__atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST) == u)
			__atomic_store_n(&g_mp_owner, NULL, __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&g_mp_lock);
	}
	if (u->thread_started) {
		uint64_t one = 1;
		ssize_t wr = write(u->stopfd, &one, sizeof one);
		(void)wr;
		pthread_join(u->thread, NULL);
	}
	__atomic_store_n(&u->table, NULL, __ATOMIC_SEQ_CST);
	quiesce(u);
	for (uint32_t i = 0; t && i < t->n; i++)
		free_slot(t->s[i]);
	free(t);
	pthread_mutex_unlock(&u->lock);
	if (u->uffd >= 0)
		close(u->uffd);
	if (u->pagemap >= 0)
		close(u->pagemap);
	if (u->stopfd >= 0)
		close(u->stopfd);
	pthread_mutex_destroy(&u->lock);
	pthread_mutex_destroy(&u->fault_lock);
	free(u->vec);
	free(u);
}

KD_UFFD_HIDDEN int kd_uffd_open(uint32_t mode_flags, struct kd_uffd **out)
{
	uint32_t mode = mode_flags & 0xffffu;
	struct kd_uffd *u;
	uint64_t have = 0;
	int r = 0;

	if (!out || mode >= NMODES || (mode_flags & ~(0xffffu | KD_UFFD_F_NO_UNPOPULATED)))
		return -EINVAL;
	if (sysconf(_SC_PAGESIZE) != (long)PG_SIZE)
		return -EINVAL;
	u = calloc(1, sizeof *u);
	if (!u)
		return -ENOMEM;
	u->mode = mode;
	u->uffd = u->pagemap = u->stopfd = -1;
	pthread_mutex_init(&u->lock, NULL);
	pthread_mutex_init(&u->fault_lock, NULL);

	if (mode == KD_UFFD_MPROTECT) {
		pthread_mutex_lock(&g_mp_lock);
		if (__atomic_load_n(&g_mp_owner, __ATOMIC_SEQ_CST))
			r = -EBUSY;
		else
			r = install_segv_handler();
		if (!r)
			__atomic_store_n(&g_mp_owner, u, __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&g_mp_lock);
		if (r)
			goto fail;
		*out = u;
		return 0;
	}

	r = uffd_features(&have, NULL);
	if (r)
		goto fail;
	struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP};
	if (mode == KD_UFFD_ASYNC) {
		api.features |= UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
	} else if ((have & UFFD_FEATURE_WP_UNPOPULATED) &&
		   !(mode_flags & KD_UFFD_F_NO_UNPOPULATED)) {
		api.features |= UFFD_FEATURE_WP_UNPOPULATED;
	} else {
		u->prefault = true;
	}
	if ((api.features & have) != api.features) {
		r = -EOPNOTSUPP;
		goto fail;
	}
	u->uffd = uffd_create(NULL);
	if (u->uffd < 0) {
		r = u->uffd;
		goto fail;
	}
	if (ioctl(u->uffd, UFFDIO_API, &api)) {
		r = -errno;
		goto fail;
	}
	if (mode == KD_UFFD_ASYNC) {
		u->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (u->pagemap < 0) {
			r = -errno;
			goto fail;
		}
		u->vec = calloc(SCAN_VEC_LEN, sizeof *u->vec);
		if (!u->vec) {
			r = -ENOMEM;
			goto fail;
		}
	} else {
		sigset_t all, old;
		u->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (u->stopfd < 0) {
			r = -errno;
			goto fail;
		}
		/* the handler thread takes no signals */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		r = -pthread_create(&u->thread, NULL, sync_thread, u);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (r)
			goto fail;
		u->thread_started = true;
	}
	*out = u;
	return 0;
fail:
	kd_uffd_close(u);
	return r;
}

/* ---- ranges ---- */

/* A copy of old with s added (add) or removed (!add); NULL on ENOMEM. */
static struct utable *table_build(const struct utable *old, struct uslot *s, bool add)
{
	uint32_t n = old ? old->n : 0, k = 0;
	struct utable *t = malloc(sizeof *t + (n + 1) * sizeof t->s[0]);

	if (!t)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		if (!add && old->s[i] == s)
			continue;
		if (add && s && old->s[i]->start > s->start) {
			t->s[k++] = s;
			s = NULL;
		}
		t->s[k++] = old->s[i];
	}
	if (add && s)
		t->s[k++] = s;
	t->n = k;
	return t;
}

/* Replace the table with t; returns once no fault handler can still be
 * reading the old one, which it frees. Caller holds u->lock. */
static void table_publish(struct kd_uffd *u, struct utable *t)
{
	struct utable *old = __atomic_exchange_n(&u->table, t, __ATOMIC_SEQ_CST);

	quiesce(u);
	free(old);
}

/* Make s write-protected from now on. Nothing applied on failure. */
static int protect_new_slot(struct kd_uffd *u, struct uslot *s)
{
	uint64_t len = s->end - s->start;
	int r;

	if (u->mode == KD_UFFD_MPROTECT) {
		stat_add(&u->st.ioctls, 1);
		if (!mprotect((void *)s->start, len, PROT_READ))
			return 0;
		r = -errno;
		mprotect((void *)s->start, len, PROT_READ | PROT_WRITE);
		return r;
	}
	struct uffdio_register reg = {.range = {.start = s->start, .len = len},
				      .mode = UFFDIO_REGISTER_MODE_WP};
	stat_add(&u->st.ioctls, 1);
	if (ioctl(u->uffd, UFFDIO_REGISTER, &reg))
		return -errno;
	if (!(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT))) {
		r = -EOPNOTSUPP;
		goto unregister;
	}
	if (u->prefault) {
		/* no WP_UNPOPULATED: an empty pte cannot carry the wp bit, so
		 * map every page (a read maps the shared zero page) */
		for (uintptr_t a = s->start; a < s->end; a += PG_SIZE)
			(void)*(volatile const char *)a;
	}
	r = uffd_writeprotect(u, s->start, len, true);
	if (!r)
		return 0;
unregister:
	ioctl(u->uffd, UFFDIO_UNREGISTER, &reg.range);
	return r;
}

KD_UFFD_HIDDEN int kd_uffd_add_range(struct kd_uffd *u, uint32_t slot, void *mem, uint64_t size)
{
	uintptr_t start = (uintptr_t)mem;
	struct uslot *s;
	struct utable *t;
	int r;

	if (!u || !mem || !size || (start | size) & (PG_SIZE - 1) || start + size < start)
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	t = __atomic_load_n(&u->table, __ATOMIC_SEQ_CST);
	r = table_find_id(t, slot) ? -EEXIST : 0;
	for (uint32_t i = 0; !r && t && i < t->n; i++)
		if (start < t->s[i]->end && t->s[i]->start < start + size)
			r = -EEXIST;
	if (r)
		goto out;
	s = calloc(1, sizeof *s);
	if (!s) {
		r = -ENOMEM;
		goto out;
	}
	s->id = slot;
	s->start = start;
	s->end = start + size;
	s->npages = size >> PG_SHIFT;
	s->nwords = (s->npages + 63) / 64;
	if (u->mode != KD_UFFD_ASYNC) {
		s->dirty = calloc(s->nwords, sizeof *s->dirty);
		if (!s->dirty) {
			free_slot(s);
			r = -ENOMEM;
			goto out;
		}
	}
	/* both tables first, so that neither step below can fail half-way */
	struct utable *with = table_build(t, s, true), *without = table_build(t, NULL, true);
	if (!with || !without) {
		free(with);
		free(without);
		free_slot(s);
		r = -ENOMEM;
		goto out;
	}
	/* publish before protecting: a fault on the range must find it */
	table_publish(u, with);
	r = protect_new_slot(u, s);
	if (r) {
		table_publish(u, without);
		free_slot(s);
	} else {
		free(without);
	}
out:
	pthread_mutex_unlock(&u->lock);
	return r;
}

KD_UFFD_HIDDEN int kd_uffd_remove_range(struct kd_uffd *u, uint32_t slot)
{
	struct uslot *s;
	int r = 0;

	if (!u)
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	s = table_find_id(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), slot);
	if (!s) {
		r = -ENOENT;
		goto out;
	}
	struct utable *without = table_build(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), s, false);
	if (!without) {
		r = -ENOMEM;
		goto out;
	}
	/* un-protect while still published, so that a store racing with the
	 * removal finds its slot (mprotect: else the SIGSEGV is not ours) */
	unprotect_slot(u, s);
	table_publish(u, without);
	free_slot(s);
out:
	pthread_mutex_unlock(&u->lock);
	return r;
}

/* ---- collect ---- */

/* async: un-protect every page set in out (pages [first, first + num)), so
 * the kernel reports them written again. Rollback after a failed walk. */
static void async_rollback(struct kd_uffd *u, struct uslot *s, uint64_t first, uint64_t num,
			   const uint64_t *out)
{
	uint64_t i = 0;

	while (i < num) {
		if (!(out[i / 64] >> (i % 64) & 1)) {
			i++;
			continue;
		}
		uint64_t j = i;
		while (j < num && out[j / 64] >> (j % 64) & 1)
			j++;
		uffd_writeprotect(u, s->start + ((first + i) << PG_SHIFT), (j - i) << PG_SHIFT,
				  false);
		i = j;
	}
}

static int async_collect(struct kd_uffd *u, struct uslot *s, uint64_t first, uint64_t num,
			 uint64_t *out, uint64_t *reprotected)
{
	uintptr_t base = s->start + (first << PG_SHIFT);
	struct pm_scan_arg a = {
		.size = sizeof a,
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = base,
		.end = base + (num << PG_SHIFT),
		.vec = (uintptr_t)u->vec,
		.vec_len = SCAN_VEC_LEN,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	uint64_t pages = 0;

	/*
	 * The walk stops early only when vec is full: then walk_end says where
	 * (pages past it were neither reported nor re-protected) and we resume
	 * there. A call that returns fewer than vec_len regions finished the
	 * range, whatever walk_end says: do_pagemap_scan (fs/proc/task_mmu.c)
	 * refills an internal 512-region buffer in several walks and leaves
	 * walk_end from the last early stop when the final walk completes.
	 * Resuming from such a stale walk_end would be safe (pages reported
	 * twice in one call were written again meanwhile) but costs a walk.
	 */
	for (;;) {
		a.walk_end = a.end; /* if an error leaves it, assume the worst */
		stat_add(&u->st.ioctls, 1);
		long n = ioctl(u->pagemap, PAGEMAP_SCAN, &a);
		if (n < 0) {
			int e = errno;
			/* the failed call may have re-protected pages it did
			 * not report: un-protect the rest of the range (those
			 * pages are reported again later) and everything
			 * reported so far */
			uffd_writeprotect(u, a.start, a.end - a.start, false);
			async_rollback(u, s, first, num, out);
			return -e;
		}
		for (long i = 0; i < n; i++) {
			uint64_t p0 = (u->vec[i].start - base) >> PG_SHIFT;
			uint64_t p1 = (u->vec[i].end - base) >> PG_SHIFT;
			for (uint64_t p = p0; p < p1; p++) {
				pages += !(out[p / 64] >> (p % 64) & 1);
				set_bit(out, p);
			}
		}
		if ((uint64_t)n < SCAN_VEC_LEN || a.walk_end >= a.end)
			break;
		if (a.walk_end <= a.start) { /* no progress: cannot happen */
			uffd_writeprotect(u, a.start, a.end - a.start, false);
			async_rollback(u, s, first, num, out);
			return -EIO;
		}
		a.start = a.walk_end;
	}
	*reprotected = pages;
	return 0;
}

/*
 * sync/mprotect: re-protect pages [p, p + n) of s, which this collector
 * took. mprotect ENOMEM (the VMA cannot be split: vm.max_map_count) is not
 * an error: the pages stay writable and their bits are put back, so they
 * are reported again by the next collect (over-reported, never lost).
 */
static int reprotect_run(struct kd_uffd *u, struct uslot *s, uint64_t p, uint64_t n,
			 uint64_t *reprotected)
{
	uintptr_t a = s->start + (p << PG_SHIFT);

	if (u->mode == KD_UFFD_MPROTECT) {
		stat_add(&u->st.ioctls, 1);
		if (mprotect((void *)a, n << PG_SHIFT, PROT_READ)) {
			if (errno != ENOMEM)
				return -errno;
			mark_dirty(s, p, p + n);
			stat_add(&u->st.fallbacks, 1);
			return 0;
		}
	} else {
		int r = uffd_writeprotect(u, a, n << PG_SHIFT, true);
		if (r)
			return r;
	}
	*reprotected += n;
	return 0;
}

static int bitmap_collect(struct kd_uffd *u, struct uslot *s, uint64_t first, uint64_t num,
			  uint64_t *out, uint64_t *reprotected)
{
	const bool sync = u->mode == KD_UFFD_SYNC;
	uint64_t end = first + num, run = 0, nrun = 0, done = 0, batch = 0;
	bool locked = false;
	int r = 0;

	for (uint64_t w = first / 64; w * 64 < end && !r; w++) {
		uint64_t lo = w * 64 < first ? first : w * 64;
		uint64_t hi = w * 64 + 64 > end ? end : w * 64 + 64;
		uint64_t m = word_mask((unsigned)(lo - w * 64), (unsigned)(hi - w * 64));
		/* a bit set after this unlocked peek is a store racing with
		 * this collect: the next one reports it */
		if (!(__atomic_load_n(&s->dirty[w], __ATOMIC_RELAXED) & m))
			continue;
		if (sync && !locked) {
			pthread_mutex_lock(&u->fault_lock);
			locked = true;
			batch = 0;
		}
		uint64_t got = __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST) & m;
		while (got && !r) {
			uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(got);
			got &= got - 1;
			set_bit(out, p - first);
			if (nrun && run + nrun == p) {
				nrun++;
				continue;
			}
			if (nrun)
				r = reprotect_run(u, s, run, nrun, &done);
			run = p;
			nrun = 1;
		}
		if (r) /* put back what was taken from this word, not yet in out */
			__atomic_fetch_or(&s->dirty[w], got, __ATOMIC_SEQ_CST);
		if (!r && locked && ++batch == 64) {
			/* let fault handling in: finish what we took first */
			if (nrun)
				r = reprotect_run(u, s, run, nrun, &done);
			nrun = 0;
			pthread_mutex_unlock(&u->fault_lock);
			locked = false;
		}
	}
	if (!r && nrun)
		r = reprotect_run(u, s, run, nrun, &done);
	if (locked)
		pthread_mutex_unlock(&u->fault_lock);
	if (r) {
		/* put every taken page back: the writable ones keep the
		 * invariant, the re-protected ones are reported again */
		for (uint64_t i = 0; i < num; i++)
			if (out[i / 64] >> (i % 64) & 1)
				mark_dirty(s, first + i, first + i + 1);
		return r;
	}
	*reprotected = done;
	return 0;
}

KD_UFFD_HIDDEN int kd_uffd_collect(struct kd_uffd *u, uint32_t slot, uint64_t first_page,
				   uint64_t num_pages, uint64_t *bitmap, uint64_t *reprotected)
{
	struct uslot *s;
	uint64_t done = 0;
	int r;

	if (!u || (!bitmap && num_pages))
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	s = table_find_id(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), slot);
	if (!s) {
		r = -ENOENT;
		goto out;
	}
	if (first_page > s->npages || num_pages > s->npages - first_page) {
		r = -EINVAL;
		goto out;
	}
	r = 0;
	if (!num_pages)
		goto out;
	memset(bitmap, 0, (num_pages + 63) / 64 * sizeof *bitmap);
	stat_add(&u->st.scans, 1);
	if (u->mode == KD_UFFD_ASYNC)
		r = async_collect(u, s, first_page, num_pages, bitmap, &done);
	else
		r = bitmap_collect(u, s, first_page, num_pages, bitmap, &done);
	if (!r)
		stat_add(&u->st.pages_reprotected, done);
out:
	pthread_mutex_unlock(&u->lock);
	if (!r && reprotected)
		*reprotected = done;
	return r;
}

KD_UFFD_HIDDEN void kd_uffd_stats_get(struct kd_uffd *u, struct kd_uffd_stats *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof *out);
	if (!u)
		return;
	out->faults = __atomic_load_n(&u->st.faults, __ATOMIC_RELAXED);
	out->scans = __atomic_load_n(&u->st.scans, __ATOMIC_RELAXED);
	out->ioctls = __atomic_load_n(&u->st.ioctls, __ATOMIC_RELAXED);
	out->pages_reprotected = __atomic_load_n(&u->st.pages_reprotected, __ATOMIC_RELAXED);
	out->fallbacks = __atomic_load_n(&u->st.fallbacks, __ATOMIC_RELAXED);
}

/* ---- probe ---- */

/* Track two scratch pages, store into the second, expect exactly it. */
static int functional_check(uint32_t mode, const char **why)
{
	const size_t len = 2 * PG_SIZE;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kd_uffd *u = NULL;
	uint64_t bm = 0, n = 0;
	int r;

	if (mem == MAP_FAILED) {
		*why = "cannot map a scratch page";
		return -errno;
	}
	r = kd_uffd_open(mode, &u);
	if (r == -EBUSY && mode == KD_UFFD_MPROTECT) {
		r = 0; /* works: another tracker in this mode is open */
		goto out;
	}
	if (r) {
		*why = "cannot open a tracker";
		goto out;
	}
	r = kd_uffd_add_range(u, 0, mem, len);
	if (r) {
		*why = mode == KD_UFFD_MPROTECT
			? "mprotect of a scratch range failed"
			: "userfaultfd: UFFDIO_REGISTER/UFFDIO_WRITEPROTECT of anonymous memory failed";
		goto out;
	}
	__atomic_store_n((volatile char *)mem + PG_SIZE, 1, __ATOMIC_RELAXED);
	r = kd_uffd_collect(u, 0, 0, 2, &bm, &n);
	if (r) {
		*why = mode == KD_UFFD_ASYNC ? "PAGEMAP_SCAN with PM_SCAN_WP_MATCHING failed"
					     : "collecting a tracked store failed";
		goto out;
	}
	if (bm != 2) {
		*why = "a store to a tracked page was not reported";
		r = -EIO;
	}
out:
	kd_uffd_close(u);
	munmap(mem, len);
	return r;
}

static int probe_uncached(uint32_t mode, const char **why)
{
	uint64_t have = 0;
	int r;

	if (mode == KD_UFFD_MPROTECT)
		return functional_check(mode, why);
	r = uffd_features(&have, why);
	if (r)
		return r;
	if (!(have & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
		*why = "userfaultfd: write-protect mode (UFFD_FEATURE_PAGEFAULT_FLAG_WP) not supported by this kernel";
		return -EOPNOTSUPP;
	}
	if (mode == KD_UFFD_ASYNC) {
		if (!(have & UFFD_FEATURE_WP_ASYNC)) {
			*why = "userfaultfd: UFFD_FEATURE_WP_ASYNC not supported by this kernel";
			return -EOPNOTSUPP;
		}
		if (!(have & UFFD_FEATURE_WP_UNPOPULATED)) {
			*why = "userfaultfd: UFFD_FEATURE_WP_UNPOPULATED not supported by this kernel";
			return -EOPNOTSUPP;
		}
		/* a plain report-only scan of one mapped page */
		static char page[PG_SIZE] __attribute__((aligned(4096)));
		struct page_region reg;
		struct pm_scan_arg a = {.size = sizeof a, .start = (uintptr_t)page,
					.end = (uintptr_t)page + PG_SIZE, .vec = (uintptr_t)&reg,
					.vec_len = 1, .return_mask = PAGE_IS_WRITTEN};
		int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			*why = "/proc/self/pagemap cannot be opened";
			return -errno;
		}
		r = ioctl(fd, PAGEMAP_SCAN, &a) < 0 ? -errno : 0;
		close(fd);
		if (r) {
			*why = "PAGEMAP_SCAN ioctl not supported";
			return r == -ENOTTY ? -EOPNOTSUPP : r;
		}
	}
	return functional_check(mode, why);
}

KD_UFFD_HIDDEN int kd_uffd_probe(uint32_t mode, const char **why)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static int result[NMODES];
	static const char *reason[NMODES];
	static bool known[NMODES];
	const char *w = NULL;
	int r;

	if (mode >= NMODES) {
		if (why)
			*why = "unknown uffd mode";
		return -EINVAL;
	}
	pthread_mutex_lock(&lock);
	if (!known[mode]) {
		result[mode] = probe_uncached(mode, &w);
		reason[mode] = result[mode] ? w : NULL;
		known[mode] = true;
	}
	r = result[mode];
	w = reason[mode];
	pthread_mutex_unlock(&lock);
	if (why)
		*why = w;
	return r;
}
