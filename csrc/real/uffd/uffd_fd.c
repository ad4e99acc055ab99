/*
 * real/uffd/uffd_fd.c - userfaultfd plumbing: creating the descriptor, the
 * feature handshake, UFFDIO_WRITEPROTECT, and the sync mode's handler
 * thread, which records each write fault and un-protects the page.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd_internal.h"


/* New userfaultfd (O_CLOEXEC | O_NONBLOCK): the syscall, then the syscall
 * restricted to user-mode faults, then /dev/userfaultfd. */
int uffd_create(const char **why)
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
int uffd_features(uint64_t *features, const char **why)
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

int uffd_writeprotect(struct kd_uffd *u, uintptr_t start, uint64_t len, bool wp)
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
	struct uffd_range *s = uffd_table_find_addr(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), page);
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

void *uffd_sync_thread(void *arg)
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

