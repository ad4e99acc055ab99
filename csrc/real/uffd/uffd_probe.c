/*
 * real/uffd/uffd_probe.c - whether each mode works here: the features the
 * kernel offers, then a functional check (open a tracker, catch one store
 * on a scratch page), cached per mode.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uffd_internal.h"

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

int kd_uffd_probe(uint32_t mode, const char **why)
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
