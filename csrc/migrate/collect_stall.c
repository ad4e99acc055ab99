/*
 * migrate/collect_stall.c - what a guest feels while another thread collects
 * its dirty log: the kernel's side of the migration stall.
 *
 * One vCPU thread keeps writing pages of one slot (guest entries of `batch`
 * stores each, round-robin over `guest_pages` pages spread evenly over the
 * slot, so after each re-protection every page faults again). The calling
 * thread is the collector: every period_ns it collects the slot with one of
 *   KD_STALL_GET    classic KVM_GET_DIRTY_LOG of the whole slot (the kernel
 *                   holds mmu_lock over the walk of the whole bitmap),
 *   KD_STALL_CLEAR  manual protect: GET (a copy, no lock), then
 *                   KVM_CLEAR_DIRTY_LOG of each chunk of chunk_pages that has
 *                   dirty bits (mmu_lock per CLEAR call),
 *   KD_STALL_RING   harvest every vCPU's ring and KVM_RESET_DIRTY_RINGS,
 *   KD_STALL_NONE   nothing (the baseline).
 * A guest entry's duration is the guest's stall: a fault that meets the
 * collector's lock waits inside it. Results: pages written and entries, the
 * entry-duration histogram (the sender's latency buckets) and its maximum,
 * the collector's passes, calls and their longest call, and the longest
 * entry counted in the guest thread's CPU time (without the time the host
 * ran other work on a shared machine). The guest is a thread of the one
 * vCPU thread pool (vcpu_pool.c); the rest uses the public API, so the same
 * harness runs on the real kernel (kvm) and on the emulated backends. On a
 * ring VM a ring-full exit waits for the collector's reset, as a vCPU in
 * KVM_RUN does, and that wait counts in the entry.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"
#include "latency.h"
#include "vcpu_pool.h"

struct guest {
	struct kd_vcpu_pool pool; /* one thread: vCPU 0 */
	const struct kd_stall_config *cfg;
	uint64_t base_gfn, stride;
	int error;
	struct kd_stall_result *res;
	uint64_t *hist;
};

/* CPU time of the calling thread: a guest entry's CPU time leaves out the
 * time the host scheduler ran something else (a loaded machine's noise) but
 * keeps a wait for a kernel lock, which spins (mmu_lock is a spin/rw lock). */
static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *guest_main(void *arg)
{
	struct guest *g = arg;
	const struct kd_stall_config *cfg = g->cfg;
	uint64_t gfns[KD_STALL_MAX_BATCH], next = 0, value = 1, t_begin = kd_clock_ns();

	while (!kd_vcpu_pool_stopping(&g->pool)) {
		uint64_t t0 = kd_clock_ns(), c0 = thread_cpu_ns(), dt, dc, done = 0;
		int r;
		for (uint32_t i = 0; i < cfg->batch; i++) {
			gfns[i] = g->base_gfn + (next % cfg->guest_pages) * g->stride;
			next++;
		}
		/* one guest entry; a ring-full exit waits for the collector's reset */
		r = kd_vcpu_pool_write(&g->pool, 0, gfns, cfg->batch, value, 0, &done,
				       &g->res->ring_full_waits);
		if (r < 0) {
			__atomic_store_n(&g->error, r, __ATOMIC_RELEASE);
			return NULL;
		}
		if (r == 1) { /* stopped inside the entry: its pages count, not the entry */
			g->res->guest_pages_written += done;
			break;
		}
		value++;
		dt = kd_clock_ns() - t0;
		dc = thread_cpu_ns() - c0;
		if (dc > g->res->stall_max_cpu_ns)
			g->res->stall_max_cpu_ns = dc;
		g->res->guest_pages_written += done;
		g->res->guest_entries++;
		g->hist[kd_latency_bucket(dt)]++;
		if (dt > g->res->stall_max_ns) {
			g->res->stall_max_ns = dt;
			g->res->stall_max_at_ns = t0 - t_begin;
		}
	}
	g->res->guest_ns = kd_clock_ns() - t_begin;
	return NULL;
}

/* One collector call, timed. */
static void timed(struct kd_stall_result *res, uint64_t t0)
{
	uint64_t dt = kd_clock_ns() - t0;

	res->collect_calls++;
	if (dt > res->call_max_ns)
		res->call_max_ns = dt;
}

static int collect_once(kd_vm *vm, const struct kd_stall_config *cfg,
			const struct kd_slot_info *si, uint64_t *bitmap,
			struct kd_dirty_gfn *entries, uint32_t nvcpus, struct kd_stall_result *res)
{
	uint64_t nwords = (si->npages + 63) / 64, t0 = kd_clock_ns();
	int r = 0;

	switch (cfg->collector) {
	case KD_STALL_GET:
		r = kd_get_dirty_log(vm, cfg->slot, bitmap, nwords);
		timed(res, t0);
		break;
	case KD_STALL_CLEAR:
		r = kd_get_dirty_log(vm, cfg->slot, bitmap, nwords);
		timed(res, t0);
		for (uint64_t first = 0; !r && first < si->npages; first += cfg->chunk_pages) {
			uint64_t num = si->npages - first < cfg->chunk_pages ? si->npages - first
									       : cfg->chunk_pages;
			uint64_t w0 = first / 64, w1 = (first + num + 63) / 64, any = 0;
			for (uint64_t w = w0; w < w1 && !any; w++)
				any = bitmap[w];
			if (!any)
				continue;
			t0 = kd_clock_ns();
			r = kd_clear_dirty_log(vm, cfg->slot, first, (uint32_t)num, bitmap + w0);
			timed(res, t0);
		}
		break;
	case KD_STALL_RING:
		for (uint32_t v = 0; !r && v < nvcpus; v++) {
			uint64_t n;
			r = kd_ring_harvest(vm, v, entries, KD_STALL_RING_CAP, &n);
		}
		timed(res, t0);
		if (!r) {
			uint64_t n;
			t0 = kd_clock_ns();
			r = kd_reset_dirty_rings(vm, &n);
			timed(res, t0);
		}
		break;
	}
	return r;
}

KD_API int kd_collect_stall_run(kd_vm *vm, const struct kd_stall_config *cfg,
				struct kd_stall_result *res, uint64_t *hist, uint32_t nbuckets)
{
	struct kd_slot_info si;
	struct kd_vm_config vc;
	struct guest g;
	uint64_t *bitmap = NULL, t_end, next;
	struct kd_dirty_gfn *entries = NULL;
	int r = 0, r2;

	if (!vm || !cfg || !res || !hist || nbuckets != KD_LAT_BUCKETS)
		return -EINVAL;
	if (cfg->collector > KD_STALL_RING || cfg->batch == 0 ||
	    cfg->batch > KD_STALL_MAX_BATCH || cfg->guest_pages == 0 || cfg->duration_ns == 0 ||
	    cfg->reserved[0] || cfg->reserved[1])
		return -EINVAL;
	if (cfg->collector == KD_STALL_CLEAR &&
	    (cfg->chunk_pages == 0 || cfg->chunk_pages % 64 || cfg->chunk_pages > (1u << 31)))
		return -EINVAL;
	r = kd_vm_config_get(vm, &vc);
	if (!r)
		r = kd_slot_info(vm, cfg->slot, &si);
	if (r)
		return r;
	if (cfg->guest_pages > si.npages)
		return -EINVAL;
	memset(res, 0, sizeof(*res));
	memset(hist, 0, nbuckets * sizeof(*hist));
	if (cfg->collector == KD_STALL_GET || cfg->collector == KD_STALL_CLEAR) {
		bitmap = calloc((si.npages + 63) / 64, 8);
		if (!bitmap)
			return -ENOMEM;
	} else if (cfg->collector == KD_STALL_RING) {
		entries = calloc(KD_STALL_RING_CAP, sizeof(*entries));
		if (!entries)
			return -ENOMEM;
	}
	g = (struct guest){.cfg = cfg, .base_gfn = si.base_gfn,
			   .stride = si.npages / cfg->guest_pages, .res = res, .hist = hist};
	r = kd_vcpu_pool_init(&g.pool, vm, 1);
	if (!r)
		r = kd_vcpu_pool_spawn(&g.pool, 0, guest_main, &g);
	if (r) {
		kd_vcpu_pool_join(&g.pool);
		free(bitmap);
		free(entries);
		return r;
	}
	next = kd_clock_ns();
	t_end = next + cfg->duration_ns;
	for (;;) {
		uint64_t now = kd_clock_ns();
		if (now >= t_end || __atomic_load_n(&g.error, __ATOMIC_RELAXED))
			break;
		if (cfg->collector == KD_STALL_NONE || now < next) {
			uint64_t until = cfg->collector == KD_STALL_NONE || next > t_end ? t_end : next;
			struct timespec ts = {(time_t)(until / 1000000000ull),
					      (long)(until % 1000000000ull)};
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			continue;
		}
		now = kd_clock_ns();
		r = collect_once(vm, cfg, &si, bitmap, entries, vc.nvcpus, res);
		if (r)
			break;
		now = kd_clock_ns() - now;
		res->collects++;
		res->collect_sum_ns += now;
		if (now > res->collect_max_ns)
			res->collect_max_ns = now;
		next += cfg->period_ns;
		if (next < kd_clock_ns())
			next = kd_clock_ns(); /* back to back when a pass outlasts the period */
	}
	kd_vcpu_pool_stop(&g.pool);
	kd_vcpu_pool_join(&g.pool);
	r2 = g.error;
	free(bitmap);
	free(entries);
	return r ? r : r2;
}
