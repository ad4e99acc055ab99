/*
 * migrate/workload.c - seeded guest write generators, and C threads (vCPUs) that run
 * them at a rate in pages per second against a VM.
 *
 * Generators (struct kd_workload_config.kind) produce gfns in
 * [first_gfn, first_gfn + npages):
 *   KD_WL_IDLE            nothing
 *   KD_WL_UNIFORM         uniformly random pages
 *   KD_WL_HOTSPOT         hot_share of the writes go to a contiguous hot set of
 *                         hot_fraction of the pages (at a seeded offset), the
 *                         rest uniformly to the other pages
 *   KD_WL_ZIPF            page ranks drawn from Zipf(zipf_s) by rejection-
 *                         inversion (Hoermann & Derflinger), ranks scattered
 *                         over the range by a seeded bijection
 *   KD_WL_SEQUENTIAL      a sweep over the range, wrapping
 *   KD_WL_MIGRATION_TEST  QEMU's migration-test guest: a sweep that
 *                         increments every page; kd_workload_generate stops at
 *                         the end of a sweep and its value hint is the number
 *                         of the sweep (1, 2, ...), i.e. the page's new count
 * The same seed gives the same sequence on every machine: the generators use
 * xoshiro256** and their own exp/log, not libm. The uniform and hotspot draws
 * are kvmdirty/page_draw.h, which the firmware guest QEMU migrates includes
 * too: with the same seed it writes the same pages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"
#include "kvmdirty/page_draw.h"
#include "vcpu_pool.h"

struct kd_workload {
	struct kd_workload_config cfg;
	struct kd_draw d;     /* the seeded draws (kvmdirty/page_draw.h) */
	uint64_t pos, sweep;  /* sequential, migration test */
	uint64_t mult, inv_ok; /* zipf: rank -> page bijection multiplier */
	double h_x1, h_n, s_div;
};

static inline uint64_t next64(struct kd_workload *w)
{
	return kd_draw_next64(&w->d);
}

static inline uint64_t below(struct kd_workload *w, uint64_t n)
{
	return kd_draw_below(&w->d, n);
}

static inline double unit(struct kd_workload *w)
{
	return (double)(next64(w) >> 11) * 0x1.0p-53;
}

/* ---- exp/log of our own: same bits everywhere, no libm ---- */

static double my_exp(double x)
{
	const double ln2 = 0.6931471805599453;
	double k, r, t = 1, sum = 1;
	int64_t ki;
	union { double d; uint64_t u; } v;

	if (x > 709)
		return 1.7976931348623157e308;
	if (x < -745)
		return 0;
	k = x / ln2;
	ki = (int64_t)(k < 0 ? k - 0.5 : k + 0.5);
	r = x - (double)ki * ln2;
	for (int i = 1; i < 18; i++) {
		t *= r / i;
		sum += t;
	}
	/* scale by 2^ki in two steps to stay in range */
	while (ki > 1000) {
		sum *= 0x1.0p1000;
		ki -= 1000;
	}
	while (ki < -1000) {
		sum *= 0x1.0p-1000;
		ki += 1000;
	}
	v.u = (uint64_t)(ki + 1023) << 52;
	return sum * v.d;
}

static double my_log(double x)
{
	union { double d; uint64_t u; } v = {x};
	int64_t e;
	double m, z, z2, t, sum;

	if (x <= 0)
		return -1.0e308;
	e = (int64_t)((v.u >> 52) & 0x7ff) - 1023;
	v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
	m = v.d; /* [1, 2) */
	if (m > 1.4142135623730951) {
		m /= 2;
		e++;
	}
	z = (m - 1) / (m + 1);
	z2 = z * z;
	t = z;
	sum = 0;
	for (int i = 1; i < 40; i += 2) {
		sum += t / i;
		t *= z2;
	}
	return 2 * sum + (double)e * 0.6931471805599453;
}

static double helper1(double x) /* log1p(x) / x */
{
	if (x > 1e-5 || x < -1e-5)
		return my_log(1 + x) / x;
	return 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x));
}

static double helper2(double x) /* expm1(x) / x */
{
	if (x > 1e-5 || x < -1e-5)
		return (my_exp(x) - 1) / x;
	return 1 + x * 0.5 * (1 + x * (1.0 / 3) * (1 + 0.25 * x));
}

static double zh(const struct kd_workload *w, double x)
{
	return my_exp(-w->cfg.zipf_s * my_log(x));
}

static double zh_int(const struct kd_workload *w, double x)
{
	double lx = my_log(x);
	return helper2((1 - w->cfg.zipf_s) * lx) * lx;
}

static double zh_int_inv(const struct kd_workload *w, double x)
{
	double t = x * (1 - w->cfg.zipf_s);
	if (t < -1)
		t = -1;
	return my_exp(helper1(t) * x);
}

static uint64_t zipf_rank(struct kd_workload *w) /* 1..npages */
{
	double n = (double)w->cfg.npages;
	for (;;) {
		double u = w->h_n + unit(w) * (w->h_x1 - w->h_n);
		double x = zh_int_inv(w, u);
		double kd = x + 0.5;
		uint64_t k = kd < 1 ? 1 : kd > n ? w->cfg.npages : (uint64_t)kd;
		if ((double)k - x <= w->s_div || u >= zh_int(w, (double)k + 0.5) - zh(w, (double)k))
			return k;
	}
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

KD_API int kd_workload_create(const struct kd_workload_config *cfg, kd_workload **out)
{
	struct kd_workload *w;

	if (!cfg || !out || cfg->kind > KD_WL_MIGRATION_TEST || cfg->reserved0)
		return -EINVAL;
	for (int i = 0; i < 4; i++)
		if (cfg->reserved[i])
			return -EINVAL;
	if (cfg->kind != KD_WL_IDLE && cfg->npages == 0)
		return -EINVAL;
	if (cfg->first_gfn + cfg->npages < cfg->first_gfn)
		return -EINVAL;
	if (cfg->kind == KD_WL_HOTSPOT &&
	    !(cfg->hot_fraction > 0 && cfg->hot_fraction <= 1 && cfg->hot_share >= 0 &&
	      cfg->hot_share <= 1))
		return -EINVAL;
	if (cfg->kind == KD_WL_ZIPF && !(cfg->zipf_s > 0 && cfg->zipf_s <= 10))
		return -EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cfg = *cfg;
	kd_draw_init(&w->d, cfg->seed, cfg->npages);
	if (cfg->kind == KD_WL_HOTSPOT) {
		double h = cfg->hot_fraction * (double)cfg->npages + 0.5;
		uint64_t hot_n = h < 1 ? 1 : (uint64_t)h;
		if (hot_n > cfg->npages)
			hot_n = cfg->npages;
		kd_draw_hot(&w->d, hot_n, (uint64_t)(cfg->hot_share * 9007199254740992.0));
	} else if (cfg->kind == KD_WL_ZIPF) {
		w->h_x1 = zh_int(w, 1.5) - 1;
		w->h_n = zh_int(w, (double)cfg->npages + 0.5);
		w->s_div = 2 - zh_int_inv(w, zh_int(w, 2.5) - zh(w, 2));
		/* an odd multiplier coprime with npages scatters ranks */
		w->mult = (next64(w) | 1) % cfg->npages;
		while (cfg->npages > 1 && (w->mult == 0 || gcd(w->mult, cfg->npages) != 1))
			w->mult = (w->mult + 1) % cfg->npages;
		if (cfg->npages == 1)
			w->mult = 1;
	}
	*out = w;
	return 0;
}

KD_API void kd_workload_destroy(kd_workload *w)
{
	free(w);
}

KD_API int64_t kd_workload_generate(kd_workload *w, uint64_t *gfns, uint64_t n,
				    uint64_t *value_hint)
{
	const uint64_t base = w ? w->cfg.first_gfn : 0, np = w ? w->cfg.npages : 0;
	uint64_t i = 0;

	if (!w || (!gfns && n))
		return -EINVAL;
	if (n > INT64_MAX)
		n = INT64_MAX;
	if (value_hint)
		*value_hint = 0;
	switch (w->cfg.kind) {
	case KD_WL_IDLE:
		return 0;
	case KD_WL_UNIFORM:
	case KD_WL_HOTSPOT:
		for (; i < n; i++)
			gfns[i] = base + kd_draw_page(&w->d);
		break;
	case KD_WL_ZIPF:
		for (; i < n; i++) {
			uint64_t rank = zipf_rank(w) - 1;
			gfns[i] = base + (uint64_t)(((unsigned __int128)rank * w->mult) % np);
		}
		break;
	case KD_WL_SEQUENTIAL:
	case KD_WL_MIGRATION_TEST:
		if (value_hint && w->cfg.kind == KD_WL_MIGRATION_TEST)
			*value_hint = w->sweep + 1;
		for (; i < n && w->pos < np; i++)
			gfns[i] = base + w->pos++;
		if (w->pos == np) {
			w->pos = 0;
			w->sweep++;
		}
		break;
	}
	return (int64_t)i;
}

KD_API int64_t kd_workload_enter(kd_workload *w, kd_vm *vm, uint32_t vcpu, uint64_t *gfns,
				 uint64_t n, uint64_t value, uint64_t *value_used,
				 struct kd_write_result *res)
{
	uint64_t hint = 0;
	int64_t k;
	int r;

	if (!w || !vm || !res)
		return -EINVAL;
	k = kd_workload_generate(w, gfns, n, &hint);
	if (k < 0)
		return k;
	if (hint)
		value = hint;
	if (value_used)
		*value_used = value;
	r = kd_write(vm, vcpu, gfns, (uint64_t)k, value, res);
	return r ? r : k;
}

/* ---- threads ---- */

struct wl_thread {
	struct kd_workload_threads *t;
	uint32_t index;
	uint64_t rate;
	struct kd_workload_thread_stats st;
};

struct kd_workload_threads {
	struct kd_vcpu_pool pool; /* thread i = vCPU i */
	kd_workload **wls;
	uint32_t n;
	uint32_t throttle; /* percent */
	uint64_t counter;  /* value source */
	kd_bql *bql;       /* guest exits that take the global lock, or NULL */
	struct wl_thread *th;
};

static void sleep_until(uint64_t t)
{
	struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

#define WL_CHUNK 1024u
#define WL_TICK_NS 1000000ull

/* Write k generated pages; returns 0, or 1 if stopped, or negative errno. */
static int write_pages(struct wl_thread *th, uint64_t *buf, uint64_t k)
{
	struct kd_workload_threads *t = th->t;
	kd_workload *w = t->wls[th->index];

	while (k) {
		uint64_t hint, value;
		int64_t g = kd_workload_generate(w, buf, k < WL_CHUNK ? k : WL_CHUNK, &hint);
		int r;
		if (g <= 0)
			return (int)g;
		value = hint ? hint : __atomic_add_fetch(&t->counter, 1, __ATOMIC_RELAXED);
		r = kd_vcpu_pool_write(&t->pool, th->index, buf, (uint64_t)g, value, 0,
				       &th->st.writes, &th->st.ring_full_waits);
		if (r)
			return r;
		k -= (uint64_t)g;
	}
	return 0;
}

static void *wl_main(void *arg)
{
	struct wl_thread *th = arg;
	struct kd_workload_threads *t = th->t;
	uint64_t *buf = malloc(WL_CHUNK * sizeof(uint64_t));
	uint64_t last = kd_clock_ns(), owed = 0; /* owed in page * ns units / 100 */
	const uint64_t unit = 1000000000ull * 100;

	if (!buf) {
		th->st.error = -ENOMEM;
		return NULL;
	}
	while (!kd_vcpu_pool_stopping(&t->pool)) {
		uint32_t thr = __atomic_load_n(&t->throttle, __ATOMIC_RELAXED);
		kd_bql *bql = __atomic_load_n(&t->bql, __ATOMIC_ACQUIRE);
		uint64_t now, k;
		int r;

		if (bql)
			kd_bql_poll(bql, th->index);

		if (th->rate == 0) { /* as fast as it goes, throttled by sleeping */
			uint64_t t0 = kd_clock_ns();
			r = write_pages(th, buf, 256);
			if (r) {
				if (r < 0)
					th->st.error = r;
				break;
			}
			if (thr) {
				uint64_t d = kd_clock_ns() - t0;
				sleep_until(kd_clock_ns() + d * thr / (100 - thr));
			}
			continue;
		}
		now = kd_clock_ns();
		owed += th->rate * (now - last) * (100 - thr);
		last = now;
		/* no catch-up burst after a long stall: at most 100 ms owed */
		if (owed > th->rate * 100000000ull * 100)
			owed = th->rate * 100000000ull * 100;
		k = owed / unit;
		owed -= k * unit;
		if (k) {
			r = write_pages(th, buf, k);
			if (r) {
				if (r < 0)
					th->st.error = r;
				break;
			}
		}
		sleep_until(now + WL_TICK_NS);
	}
	free(buf);
	return NULL;
}

KD_API int kd_workload_threads_start(kd_vm *vm, kd_workload *const *wls, uint32_t nthreads,
				     uint64_t rate, uint64_t value_base,
				     kd_workload_threads **out)
{
	struct kd_workload_threads *t;
	struct kd_vm_config cfg;
	int r;

	if (!vm || !wls || !out || nthreads == 0)
		return -EINVAL;
	if (kd_vm_config_get(vm, &cfg) || nthreads > cfg.nvcpus)
		return -EINVAL;
	/* overflow guard for the owed arithmetic: rate * 1e8 * 100 < 2^64 */
	if (rate > 1000000000ull)
		return -EINVAL;
	for (uint32_t i = 0; i < nthreads; i++)
		if (!wls[i])
			return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->th = calloc(nthreads, sizeof(*t->th));
	t->wls = calloc(nthreads, sizeof(*t->wls));
	r = t->th && t->wls ? kd_vcpu_pool_init(&t->pool, vm, nthreads) : -ENOMEM;
	if (r) {
		free(t->th);
		free(t->wls);
		free(t);
		return r;
	}
	memcpy(t->wls, wls, nthreads * sizeof(*wls));
	t->n = nthreads;
	t->counter = value_base;
	for (uint32_t i = 0; i < nthreads; i++) {
		t->th[i].t = t;
		t->th[i].index = i;
		t->th[i].rate = rate / nthreads + (i < rate % nthreads);
	}
	for (uint32_t i = 0; i < nthreads; i++) {
		if (rate && !t->th[i].rate)
			continue; /* this vCPU has no share of a tiny rate */
		r = kd_vcpu_pool_spawn(&t->pool, i, wl_main, &t->th[i]);
		if (r) {
			kd_workload_threads_stop(t, NULL, 0);
			return r;
		}
	}
	*out = t;
	return 0;
}

KD_API int kd_workload_threads_set_bql(kd_workload_threads *t, kd_bql *b)
{
	struct kd_bql_stats st;

	if (!t || (b && kd_bql_stats(b, &st)))
		return -EINVAL;
	__atomic_store_n(&t->bql, b, __ATOMIC_RELEASE);
	return 0;
}

KD_API int kd_workload_threads_throttle(kd_workload_threads *t, uint32_t percent)
{
	if (!t || percent > 99)
		return -EINVAL;
	__atomic_store_n(&t->throttle, percent, __ATOMIC_RELAXED);
	return 0;
}

KD_API int kd_workload_threads_stop(kd_workload_threads *t, struct kd_workload_thread_stats *out,
				    uint32_t cap)
{
	int err = 0;

	if (!t)
		return -EINVAL;
	kd_vcpu_pool_stop(&t->pool);
	kd_vcpu_pool_join(&t->pool);
	for (uint32_t i = 0; i < t->n; i++) {
		if (out && i < cap)
			out[i] = t->th[i].st;
		if (t->th[i].st.error && !err)
			err = (int)t->th[i].st.error;
	}
	free(t->th);
	free(t->wls);
	free(t);
	return err;
}
