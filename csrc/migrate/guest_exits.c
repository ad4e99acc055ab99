/*
 * migrate/guest_exits.c - the global lock ("BQL", QEMU's qemu_global_mutex)
 * and the guest exits that need it: what a guest feels while the migration
 * loop holds that lock.
 *
 * A vCPU leaves the guest every exit_interval_ns of guest run time (an MMIO
 * or PIO access to a device emulated in user space); each exit takes the
 * lock, holds it for service_ns (the device emulation) and returns to the
 * guest. Its WAIT is the time from the exit to taking the lock: zero when
 * the lock is free, the rest of the holder's hold otherwise. The migration
 * loop is the other holder: a whole iteration under QEMU 2010's iothread
 * (sync, scan, send up to the 50 ms cap), only the bitmap sync in a
 * migration thread (QEMU >= 1.3-1.4).
 *
 * Two clocks, one set of statistics (wait histogram, max wait with what it
 * waited for, blocked time, holds by holder kind, an event log):
 *  - real time: kd_bql_lock/unlock are a FIFO ticket lock (mutex + condvar)
 *    taken by the loop; vCPU threads call kd_bql_poll between guest entries
 *    and perform the exits that are due. FIFO is assumed: QEMU's BQL is a
 *    plain mutex, a FIFO lock gives the waiters the lock in arrival order
 *    and so makes a wait exactly "the holds ahead of me".
 *  - virtual clock (KD_BQL_VIRTUAL): the loop records its holds as
 *    intervals (kd_bql_hold); kd_bql_model then plays every vCPU's exits
 *    against them as a single FIFO server: exit k of a vCPU arrives at a,
 *    starts at the first instant >= max(a, end of the previous exit's
 *    service) that lies in no hold, waits start - a, leaves at start +
 *    service, and the vCPU's next exit arrives exit_interval_ns of guest
 *    run time later. vCPU i's first exit is at t0 + (i + 1) * interval /
 *    nvcpus. FIFO as in real time: an exit that arrived before a hold began
 *    goes before it (so between two back-to-back iterations the exits that
 *    queued during the first are served). The loop's holds are fixed on the
 *    timeline: the loop's own delay by exits served ahead of it (at most the
 *    queued exits' service) is neglected.
 * Invariant of the statistics: blocked_ns = sum over exits of (wait +
 * service); histogram counts = exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kvmdirty.h"
#include "latency.h"

#define NKINDS (KD_BQL_HOLDER_COLLECT + 1)

struct kd_bql {
	struct kd_bql_config cfg;
	pthread_mutex_t m;
	pthread_cond_t cv;
	uint64_t next_ticket, serving; /* FIFO: under m */
	uint32_t holder;               /* enum kd_bql_holder of the current hold */
	uint64_t hold_start;
	uint64_t *next_exit;           /* per vCPU: when its next exit is due (0: unset) */
	struct kd_bql_stats st;        /* under m */
	uint64_t hist[KD_LAT_BUCKETS];
	struct kd_bql_event *log;
	uint64_t log_cap;
	/* virtual clock: the loop's holds, in order, and the model's state */
	struct kd_bql_event *holds;
	uint64_t nholds, holds_cap;
	int modelled;
};

static void log_event(kd_bql *b, uint32_t type, uint64_t at, uint64_t dur, uint32_t holder,
		      uint32_t vcpu)
{
	if (!b->log)
		return;
	if (b->st.log_used == b->log_cap) {
		b->st.log_dropped++;
		return;
	}
	b->log[b->st.log_used++] = (struct kd_bql_event){at, dur, type, holder, vcpu};
}

/* One exit's accounting; caller holds m (real time) or is the model. */
static void record_exit(kd_bql *b, uint32_t vcpu, uint64_t arrival, uint64_t wait,
			uint32_t holder)
{
	struct kd_bql_stats *st = &b->st;

	st->exits++;
	st->wait_sum_ns += wait;
	st->blocked_ns += wait + b->cfg.service_ns;
	if (holder != KD_BQL_HOLDER_NONE)
		st->waited_exits++;
	if (wait > st->wait_max_ns || st->exits == 1) {
		st->wait_max_ns = wait;
		st->wait_max_at_ns = arrival;
		st->wait_max_holder = holder;
		st->wait_max_vcpu = vcpu;
	}
	b->hist[kd_latency_bucket(wait)]++;
	if (holder != KD_BQL_HOLDER_NONE)
		log_event(b, KD_BQL_EV_WAIT, arrival, wait, holder, vcpu);
}

static void record_hold(kd_bql *b, uint32_t holder, uint64_t start, uint64_t dur)
{
	struct kd_bql_stats *st = &b->st;

	st->holds[holder]++;
	st->hold_sum_ns[holder] += dur;
	if (dur > st->hold_max_ns[holder])
		st->hold_max_ns[holder] = dur;
	if (holder != KD_BQL_HOLDER_EXIT)
		log_event(b, KD_BQL_EV_HOLD, start, dur, holder, UINT32_MAX);
}

KD_API int kd_bql_create(const struct kd_bql_config *cfg, kd_bql **out)
{
	kd_bql *b;

	if (!cfg || !out || cfg->nvcpus == 0 || cfg->nvcpus > KD_MAX_VCPUS ||
	    (cfg->flags & ~KD_BQL_VIRTUAL) || cfg->reserved[0] || cfg->reserved[1])
		return -EINVAL;
	/* an exit must leave the guest some run time: service < interval */
	if (cfg->exit_interval_ns && cfg->service_ns >= cfg->exit_interval_ns)
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->next_exit = calloc(cfg->nvcpus, sizeof(uint64_t));
	if (!b->next_exit) {
		free(b);
		return -ENOMEM;
	}
	b->cfg = *cfg;
	pthread_mutex_init(&b->m, NULL);
	pthread_cond_init(&b->cv, NULL);
	*out = b;
	return 0;
}

KD_API void kd_bql_destroy(kd_bql *b)
{
	if (!b)
		return;
	pthread_mutex_destroy(&b->m);
	pthread_cond_destroy(&b->cv);
	free(b->holds);
	free(b->next_exit);
	free(b);
}

KD_API int kd_bql_set_log(kd_bql *b, struct kd_bql_event *log, uint64_t cap)
{
	if (!b || (!log && cap))
		return -EINVAL;
	pthread_mutex_lock(&b->m);
	b->log = cap ? log : NULL;
	b->log_cap = cap;
	b->st.log_used = b->st.log_dropped = 0;
	pthread_mutex_unlock(&b->m);
	return 0;
}

/* ---- real time ---- */

/* Take the lock in FIFO order; returns the time it was taken. */
static uint64_t fifo_lock(kd_bql *b, uint32_t holder, uint32_t *holder_at_arrival)
{
	uint64_t ticket, now;

	pthread_mutex_lock(&b->m);
	if (holder_at_arrival)
		*holder_at_arrival = b->serving != b->next_ticket ? b->holder : KD_BQL_HOLDER_NONE;
	ticket = b->next_ticket++;
	while (b->serving != ticket)
		pthread_cond_wait(&b->cv, &b->m);
	now = kd_clock_ns();
	b->holder = holder;
	b->hold_start = now;
	pthread_mutex_unlock(&b->m);
	return now;
}

/* Release the hold; with `loop`, only a hold kd_bql_lock took (-EPERM). */
static int fifo_unlock(kd_bql *b, bool loop)
{
	uint64_t now = kd_clock_ns();

	pthread_mutex_lock(&b->m);
	if (loop && (b->serving == b->next_ticket || b->holder == KD_BQL_HOLDER_NONE ||
		     b->holder == KD_BQL_HOLDER_EXIT)) {
		pthread_mutex_unlock(&b->m);
		return -EPERM;
	}
	record_hold(b, b->holder, b->hold_start, now - b->hold_start);
	b->holder = KD_BQL_HOLDER_NONE;
	b->serving++;
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->m);
	return 0;
}

KD_API int kd_bql_lock(kd_bql *b, uint32_t holder)
{
	if (!b || (b->cfg.flags & KD_BQL_VIRTUAL) || holder == KD_BQL_HOLDER_NONE ||
	    holder == KD_BQL_HOLDER_EXIT || holder >= NKINDS)
		return -EINVAL;
	fifo_lock(b, holder, NULL);
	return 0;
}

KD_API int kd_bql_unlock(kd_bql *b)
{
	if (!b || (b->cfg.flags & KD_BQL_VIRTUAL))
		return -EINVAL;
	return fifo_unlock(b, true);
}

/* The exit itself: wait for the lock, serve, leave; returns release time. */
static uint64_t one_exit(kd_bql *b, uint32_t vcpu)
{
	uint32_t holder;
	uint64_t arrival = kd_clock_ns(), got, end;

	got = fifo_lock(b, KD_BQL_HOLDER_EXIT, &holder);
	end = got + b->cfg.service_ns;
	while (kd_clock_ns() < end) /* device emulation: busy, as a vCPU thread is */
		;
	pthread_mutex_lock(&b->m);
	record_exit(b, vcpu, arrival, got - arrival, holder);
	pthread_mutex_unlock(&b->m);
	fifo_unlock(b, false);
	return kd_clock_ns();
}

KD_API int kd_bql_poll(kd_bql *b, uint32_t vcpu)
{
	uint64_t now;
	int n = 0;

	if (!b || vcpu >= b->cfg.nvcpus || (b->cfg.flags & KD_BQL_VIRTUAL))
		return -EINVAL;
	if (!b->cfg.exit_interval_ns)
		return 0;
	now = kd_clock_ns();
	if (!b->next_exit[vcpu]) /* first poll: stagger the vCPUs */
		b->next_exit[vcpu] = now + b->cfg.exit_interval_ns * (vcpu + 1) / b->cfg.nvcpus;
	/* at most one exit per poll: the guest runs between two exits */
	if (now >= b->next_exit[vcpu]) {
		b->next_exit[vcpu] = one_exit(b, vcpu) + b->cfg.exit_interval_ns;
		n = 1;
	}
	return n;
}

/* ---- virtual clock ---- */

KD_API int kd_bql_hold(kd_bql *b, uint32_t holder, uint64_t start_ns, uint64_t end_ns)
{
	if (!b || !(b->cfg.flags & KD_BQL_VIRTUAL) || holder == KD_BQL_HOLDER_NONE ||
	    holder == KD_BQL_HOLDER_EXIT || holder >= NKINDS || end_ns < start_ns || b->modelled)
		return -EINVAL;
	if (b->nholds && start_ns < b->holds[b->nholds - 1].at_ns + b->holds[b->nholds - 1].dur_ns)
		return -EINVAL; /* holds are in order and do not overlap */
	if (end_ns == start_ns)
		return 0;
	if (b->nholds == b->holds_cap) {
		uint64_t cap = b->holds_cap ? b->holds_cap * 2 : 256;
		struct kd_bql_event *h = realloc(b->holds, cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		b->holds = h;
		b->holds_cap = cap;
	}
	b->holds[b->nholds++] = (struct kd_bql_event){start_ns, end_ns - start_ns, KD_BQL_EV_HOLD,
						      holder, UINT32_MAX};
	return 0;
}

static uint64_t hold_end(const struct kd_bql_event *h)
{
	return h->at_ns + h->dur_ns;
}

KD_API int kd_bql_model(kd_bql *b, uint64_t t0, uint64_t t1)
{
	const uint64_t iv = b ? b->cfg.exit_interval_ns : 0, svc = b ? b->cfg.service_ns : 0;
	uint64_t free_at = t0, hs = 0, ha = 0; /* holds before hs end <= every later start */
	uint64_t *next;
	uint32_t n;

	if (!b || !(b->cfg.flags & KD_BQL_VIRTUAL) || t1 < t0 || b->modelled)
		return -EINVAL;
	b->modelled = 1;
	for (uint64_t i = 0; i < b->nholds; i++) {
		const struct kd_bql_event *h = &b->holds[i];
		record_hold(b, h->holder, h->at_ns, h->dur_ns);
	}
	if (!iv)
		return 0;
	n = b->cfg.nvcpus;
	next = b->next_exit;
	for (uint32_t i = 0; i < n; i++)
		next[i] = t0 + iv * (i + 1) / n;
	for (;;) {
		uint32_t v = 0, holder = KD_BQL_HOLDER_NONE;
		uint64_t a, start;
		for (uint32_t i = 1; i < n; i++)
			if (next[i] < next[v])
				v = i;
		a = next[v];
		if (a >= t1)
			break;
		/* what holds the lock when the exit arrives */
		while (ha < b->nholds && hold_end(&b->holds[ha]) <= a)
			ha++;
		if (ha < b->nholds && b->holds[ha].at_ns <= a)
			holder = b->holds[ha].holder;
		else if (free_at > a)
			holder = KD_BQL_HOLDER_EXIT;
		/* first free instant: after the exits ahead, outside every hold */
		start = a > free_at ? a : free_at;
		while (hs < b->nholds && hold_end(&b->holds[hs]) <= start)
			hs++;
		/* FIFO: a hold that began after the exit arrived does not delay it */
		while (hs < b->nholds && b->holds[hs].at_ns <= start && b->holds[hs].at_ns <= a) {
			start = hold_end(&b->holds[hs]);
			hs++;
		}
		record_exit(b, v, a, start - a, holder);
		free_at = start + svc;
		b->st.holds[KD_BQL_HOLDER_EXIT]++;
		b->st.hold_sum_ns[KD_BQL_HOLDER_EXIT] += svc;
		if (svc > b->st.hold_max_ns[KD_BQL_HOLDER_EXIT])
			b->st.hold_max_ns[KD_BQL_HOLDER_EXIT] = svc;
		next[v] = free_at + iv;
	}
	return 0;
}

/* ---- results ---- */

KD_API int kd_bql_stats(kd_bql *b, struct kd_bql_stats *out)
{
	if (!b || !out)
		return -EINVAL;
	pthread_mutex_lock(&b->m);
	*out = b->st;
	pthread_mutex_unlock(&b->m);
	return 0;
}

KD_API int kd_bql_histogram(kd_bql *b, uint64_t *out, uint32_t nbuckets)
{
	if (!b || !out || nbuckets != KD_LAT_BUCKETS)
		return -EINVAL;
	pthread_mutex_lock(&b->m);
	memcpy(out, b->hist, sizeof(b->hist));
	pthread_mutex_unlock(&b->m);
	return 0;
}
