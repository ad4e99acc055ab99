/*
 * real/uffd/uffd_collect.c - kd_uffd_collect: report the pages written
 * since the last collect and re-protect exactly those (async: one
 * PAGEMAP_SCAN walk; sync and mprotect: take bits from the slot's bitmap,
 * then write-protect them), and the tracker's statistics.
 */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "uffd_internal.h"

/* ---- collect ---- */

/* async: un-protect every page set in out (pages [first, first + num)), so
 * the kernel reports them written again. Rollback after a failed walk. */
static void async_rollback(struct kd_uffd *u, struct uffd_range *s, uint64_t first, uint64_t num,
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

static int async_collect(struct kd_uffd *u, struct uffd_range *s, uint64_t first, uint64_t num,
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
static int reprotect_run(struct kd_uffd *u, struct uffd_range *s, uint64_t p, uint64_t n,
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

static int bitmap_collect(struct kd_uffd *u, struct uffd_range *s, uint64_t first, uint64_t num,
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

int kd_uffd_collect(struct kd_uffd *u, uint32_t slot, uint64_t first_page,
		    uint64_t num_pages, uint64_t *bitmap, uint64_t *reprotected)
{
	struct uffd_range *s;
	uint64_t done = 0;
	int r;

	if (!u || (!bitmap && num_pages))
		return -EINVAL;
	pthread_mutex_lock(&u->lock);
	s = uffd_table_find_id(__atomic_load_n(&u->table, __ATOMIC_SEQ_CST), slot);
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

void kd_uffd_stats_get(struct kd_uffd *u, struct kd_uffd_stats *out)
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

