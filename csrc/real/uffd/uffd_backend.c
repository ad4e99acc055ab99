/*
 * real/uffd/uffd_backend.c - the tracker of the "uffd" backend: open and
 * close in each mode, adding and removing ranges, statistics. The other
 * jobs have their own files: uffd_table.c (the slot table's structure;
 * publishing a table and waiting out its readers are here),
 * uffd_segv.c (the mprotect mode's SIGSEGV handler), uffd_fd.c
 * (userfaultfd plumbing, the sync handler thread), uffd_collect.c
 * (reporting and re-protecting), uffd_probe.c (what works here). See
 * uffd_backend.h for the API and uffd_internal.h for the invariant.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uffd_internal.h"

/* ---- the table's readers (the top of uffd_internal.h) ---- */

/* Wait until no fault handler can still see a table or tracker that was
 * unpublished before this call. Who the readers are is the mode's: the
 * SIGSEGV handlers in flight (mprotect), else the sync handler thread
 * inside the table (u->readers; async has no handler and no reader). */
static void quiesce(struct kd_uffd *u)
{
	if (u->mode == KD_UFFD_MPROTECT) {
		while (uffd_mp_inflight())
			sched_yield();
		return;
	}
	while (__atomic_load_n(&u->readers, __ATOMIC_SEQ_CST))
		sched_yield();
}

/* Replace the table with t; returns once no fault handler can still be
 * reading the old one, which it frees. Caller holds u->lock. */
static void publish(struct kd_uffd *u, struct utable *t)
{
	struct utable *old = __atomic_exchange_n(&u->table, t, __ATOMIC_SEQ_CST);

	quiesce(u);
	free(old);
}

/* ---- open / close ---- */

static void free_slot(struct uffd_range *s)
{
	if (s) {
		free(s->dirty);
		free(s);
	}
}

/* Stop protecting s (memory stays mapped, becomes plainly writable). */
static void unprotect_slot(struct kd_uffd *u, struct uffd_range *s)
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

void kd_uffd_close(struct kd_uffd *u)
{
	struct utable *t;

	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	t = __atomic_load_n(&u->table, __ATOMIC_SEQ_CST);
	for (uint32_t i = 0; t && i < t->n; i++)
		unprotect_slot(u, t->s[i]);
	if (u->mode == KD_UFFD_MPROTECT)
		uffd_mp_release(u);
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

int kd_uffd_open(uint32_t mode_flags, struct kd_uffd **out)
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
		r = uffd_mp_claim(u);
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
		r = -pthread_create(&u->thread, NULL, uffd_sync_thread, u);
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

/* Make s write-protected from now on. Nothing applied on failure. */
static int protect_new_slot(struct kd_uffd *u, struct uffd_range *s)
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

int kd_uffd_add_range(struct kd_uffd *u, uint32_t slot, void *mem, uint64_t size)
{
	uintptr_t start = (uintptr_t)mem;
	struct uffd_range *s;
	struct utable *t;
	int r;

	if (!u || !mem || !size || (start | size) & (PG_SIZE - 1) || start + size < start)
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	t = __atomic_load_n(&u->table, __ATOMIC_SEQ_CST);
	r = uffd_table_find_id(t, slot) ? -EEXIST : 0;
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
	struct utable *with = uffd_table_build(t, s, true), *without = uffd_table_build(t, NULL, true);
	if (!with || !without) {
		free(with);
		free(without);
		free_slot(s);
		r = -ENOMEM;
		goto out;
	}
	/* publish before protecting: a fault on the range must find it */
	publish(u, with);
	r = protect_new_slot(u, s);
	if (r) {
		publish(u, without);
		free_slot(s);
	} else {
		free(without);
	}
out:
	pthread_mutex_unlock(&u->lock);
	return r;
}

int kd_uffd_remove_range(struct kd_uffd *u, uint32_t slot)
{
	struct uffd_range *s;
	int r = 0;

	if (!u)
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	s = uffd_table_find_id(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), slot);
	if (!s) {
		r = -ENOENT;
		goto out;
	}
	struct utable *without = uffd_table_build(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), s, false);
	if (!without) {
		r = -ENOMEM;
		goto out;
	}
	/* un-protect while still published, so that a store racing with the
	 * removal finds its slot (mprotect: else the SIGSEGV is not ours) */
	unprotect_slot(u, s);
	publish(u, without);
	free_slot(s);
out:
	pthread_mutex_unlock(&u->lock);
	return r;
}

