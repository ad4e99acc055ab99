/*
 * migrate/sendpath.c - the scan-and-send inner loop of pre-copy live migration.
 *
 * A kd_sender walks a list of dirty pages (a gfn array, or a range of a slot),
 * and for each page: reads it from guest memory, detects a zero page (AVX2
 * where the CPU has it, else 64-bit words), encodes a wire record (wire_encode.c)
 * into the caller's batch buffer, charges the bandwidth limiter, and keeps
 * per-page bookkeeping (first 8 bytes when last sent -> redundant sends;
 * age of the dirty information -> sample-to-send latency histogram).
 *
 * Content-free regions (KD_SEND_REGION_VERSIONS) hold a 64-bit version per
 * page instead of its 4 KiB: the version is the page (0 = zero page). Such a
 * page is encoded as a 16-byte VERSION record but counted, charged to the
 * limiter, timed on the link and fitted into the batch as the 4104-byte PAGE
 * record it stands for, so that both page models give the same figures:
 *
 *   invariant: s->model >= s->used; batch boundaries, windows, waits, the
 *   virtual clock and every counter depend on s->model only.
 *
 * Like QEMU's ram_save_iterate:
 *  - rate limit: a budget of rate_limit / 10 bytes per 100 ms window
 *    (BUFFER_DELAY); a record that would take the window past its budget
 *    waits for the next window, so no window ever exceeds the budget;
 *    zero pages are charged their 9 wire bytes, or a full page with
 *    KD_SEND_ZERO_AS_FULL (the 2010 proposal);
 *  - time cap: every 64 pages, if more than max_wait_ns passed since
 *    kd_sender_iteration_begin, leave (KD_SEND_TIME_CAP);
 *  - chunked clear (QEMU clear_bmap): with a region's clear_shift set, the
 *    2^shift-page chunk holding a page is KVM_CLEAR_DIRTY_LOG'd (with the GET
 *    snapshot as mask) just before the first page of the chunk is read.
 *
 * Two clocks. Real: CLOCK_MONOTONIC, waits sleep. Virtual
 * (KD_SEND_VIRTUAL_CLOCK): a deterministic clock the sender advances by
 * page_cost_ns per page, record bytes / link_bandwidth per record, the chunk
 * clear cost model, and waits; with a deadline the call returns
 * KD_SEND_DEADLINE when the clock reaches it, so the caller can run the
 * workload for the elapsed interval and call again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvmdirty.h"
#include "latency.h"
#include "simd.h"
#include "wire_format.h"

#define PAGE KD_PAGE_SIZE
#define ZERO_REC 9u

#define PAGE_REC (8u + KD_PAGE_SIZE)

/* ---- the sender ---- */

struct kd_sender {
	struct kd_send_config cfg;
	int virt;
	uint64_t now;       /* virtual clock, ns */
	uint64_t epoch;     /* real: CLOCK_MONOTONIC at creation */
	uint64_t window;    /* index of the current 100 ms window */
	uint64_t window_bytes;
	uint64_t waited_window; /* window + 1 whose wait was counted */
	uint64_t xfer_rem;  /* remainder of bytes * 1e9 / link_bandwidth */
	uint64_t iter_start, iter_pages;
	uint8_t *buf;
	uint64_t cap, used; /* payload bytes after the batch header */
	uint64_t model;     /* the same, counting VERSION records as PAGE records */
	uint32_t nrec;
	uint32_t pcrc;      /* CRC32C of the open batch's payload so far */
	uint64_t seq;
	uint64_t *wlog, wlog_cap;
	struct kd_send_stats st;
	uint64_t hist[KD_LAT_BUCKETS];
};

static inline uint64_t now_ns(const kd_sender *s)
{
	return s->virt ? s->now : kd_clock_ns();
}

static int check_cfg(const struct kd_send_config *c)
{
	if (c->flags & ~(KD_SEND_VIRTUAL_CLOCK | KD_SEND_ZERO_AS_FULL | KD_SEND_RATE_YIELD))
		return -EINVAL;
	if (c->reserved[0] || c->reserved[1] || c->reserved[2])
		return -EINVAL;
	/* a window's budget must hold at least one full page record */
	if (c->rate_limit && c->rate_limit / 10 < PAGE_REC)
		return -EINVAL;
	if (!(c->flags & KD_SEND_VIRTUAL_CLOCK) && (c->link_bandwidth || c->page_cost_ns ||
						    c->clear_call_ns || c->reprotect_ns))
		return -EINVAL; /* cost model only means something on the virtual clock */
	return 0;
}

KD_API int kd_sender_create(const struct kd_send_config *cfg, kd_sender **out)
{
	kd_sender *s;
	int r;

	if (!cfg || !out)
		return -EINVAL;
	r = check_cfg(cfg);
	if (r)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	s->virt = !!(cfg->flags & KD_SEND_VIRTUAL_CLOCK);
	s->epoch = s->virt ? 0 : kd_clock_ns();
	s->iter_start = now_ns(s);
	*out = s;
	return 0;
}

KD_API void kd_sender_destroy(kd_sender *s)
{
	free(s);
}

KD_API int kd_sender_set_rate_limit(kd_sender *s, uint64_t rate_limit)
{
	if (!s || (rate_limit && rate_limit / 10 < PAGE_REC))
		return -EINVAL;
	s->cfg.rate_limit = rate_limit;
	return 0;
}

KD_API int kd_sender_set_buffer(kd_sender *s, void *buf, uint64_t cap)
{
	if (!s || (buf && cap < KD_WIRE_BATCH_HEADER + PAGE_REC) ||
	    (buf && cap - KD_WIRE_BATCH_HEADER > KD_WIRE_MAX_PAYLOAD))
		return -EINVAL;
	if (s->nrec)
		return -EBUSY; /* flush the open batch first */
	s->buf = buf;
	s->cap = buf ? cap - KD_WIRE_BATCH_HEADER : 0;
	s->used = 0;
	s->model = 0;
	s->pcrc = 0;
	return 0;
}

KD_API int kd_sender_set_window_log(kd_sender *s, uint64_t *log, uint64_t cap)
{
	if (!s || (!log && cap))
		return -EINVAL;
	s->wlog = log;
	s->wlog_cap = cap;
	return 0;
}

KD_API int kd_sender_flush(kd_sender *s, uint64_t *len)
{
	int r;

	if (!s || !len)
		return -EINVAL;
	*len = 0;
	if (!s->buf || !s->nrec)
		return 0;
	/* the payload was checksummed as it was encoded: only the header is new */
	r = kd_wire_seal_batch_crc(s->buf, s->used, s->nrec, s->seq, s->pcrc);
	if (r)
		return r;
	*len = KD_WIRE_BATCH_HEADER + s->used;
	s->st.header_bytes += KD_WIRE_BATCH_HEADER;
	s->st.batches++;
	s->seq++;
	s->used = 0;
	s->model = 0;
	s->nrec = 0;
	s->pcrc = 0;
	return 0;
}

/* Control records (MEM_SIZE, EOS): counted, never rate limited. */
static int put_control(kd_sender *s, int64_t n)
{
	if (n < 0)
		return n == -ENOSPC ? KD_SEND_FULL : (int)n;
	s->pcrc = kd_crc32c(s->pcrc, s->buf + KD_WIRE_BATCH_HEADER + s->used, (uint64_t)n);
	s->used += (uint64_t)n;
	s->model += (uint64_t)n;
	s->nrec++;
	s->st.wire_bytes += (uint64_t)n;
	return KD_SEND_DONE;
}

KD_API int kd_sender_put_mem_size(kd_sender *s, const uint64_t *gpas, const uint64_t *sizes,
				  uint32_t nregions)
{
	if (!s)
		return -EINVAL;
	if (!s->buf) { /* counting only */
		if (!gpas || !sizes || !nregions || nregions > KD_WIRE_MAX_REGIONS)
			return -EINVAL;
		s->st.wire_bytes += 12 + 16ull * nregions;
		return KD_SEND_DONE;
	}
	if (s->model + 12 + 16ull * nregions > s->cap && s->nrec)
		return KD_SEND_FULL;
	return put_control(s, kd_wire_put_mem_size(s->buf + KD_WIRE_BATCH_HEADER + s->used,
						   s->cap - s->used, gpas, sizes, nregions));
}

KD_API int kd_sender_put_eos(kd_sender *s)
{
	if (!s)
		return -EINVAL;
	if (!s->buf) {
		s->st.wire_bytes += 8;
		return KD_SEND_DONE;
	}
	if (s->model + 8 > s->cap)
		return KD_SEND_FULL;
	return put_control(s, kd_wire_put_eos(s->buf + KD_WIRE_BATCH_HEADER + s->used,
					      s->cap - s->used));
}

KD_API uint64_t kd_sender_now(const kd_sender *s)
{
	return s ? now_ns(s) : 0;
}

KD_API int kd_sender_advance(kd_sender *s, uint64_t ns)
{
	if (!s || !s->virt)
		return -EINVAL;
	s->now += ns;
	return 0;
}

KD_API int kd_sender_set_costs(kd_sender *s, uint64_t page_cost_ns, uint64_t link_bandwidth)
{
	/* virtual clock only: the price of a page changes when the VM stops
	 * (no vCPU competes with the sender for the host's cores) */
	if (!s || !s->virt)
		return -EINVAL;
	s->cfg.page_cost_ns = page_cost_ns;
	s->cfg.link_bandwidth = link_bandwidth;
	s->xfer_rem = 0;
	return 0;
}

KD_API int kd_sender_iteration_begin(kd_sender *s)
{
	if (!s)
		return -EINVAL;
	s->iter_start = now_ns(s);
	s->iter_pages = 0;
	return 0;
}

KD_API int kd_sender_stats(const kd_sender *s, struct kd_send_stats *out)
{
	if (!s || !out)
		return -EINVAL;
	*out = s->st;
	return 0;
}

KD_API int kd_sender_latency_histogram(kd_sender *s, uint64_t *out, uint32_t nbuckets, int reset)
{
	if (!s || (!out && nbuckets) || (nbuckets && nbuckets != KD_LAT_BUCKETS))
		return -EINVAL;
	if (out)
		memcpy(out, s->hist, sizeof(s->hist));
	if (reset)
		memset(s->hist, 0, sizeof(s->hist));
	return 0;
}

KD_API uint64_t kd_latency_bucket_floor(uint32_t bucket)
{
	uint32_t e, sub;
	if (bucket < 16)
		return bucket;
	e = bucket / 16 + 3;
	sub = bucket % 16;
	if (e > 63)
		return UINT64_MAX;
	return (uint64_t)(16 + sub) << (e - 4);
}

/* Close windows the clock has left; start the one it is in. */
static void roll_window(kd_sender *s, uint64_t now)
{
	uint64_t w = (now - s->epoch) / KD_SEND_WINDOW_NS;

	if (w == s->window)
		return;
	if (s->window_bytes) {
		if (s->wlog && s->st.windows < s->wlog_cap)
			s->wlog[s->st.windows] = s->window_bytes;
		s->st.windows++;
		if (s->window_bytes > s->st.max_window_bytes)
			s->st.max_window_bytes = s->window_bytes;
	}
	s->window = w;
	s->window_bytes = 0;
}

KD_API int kd_sender_close_window(kd_sender *s)
{
	/* log the current window now (end of a run) */
	if (!s)
		return -EINVAL;
	if (s->window_bytes) {
		if (s->wlog && s->st.windows < s->wlog_cap)
			s->wlog[s->st.windows] = s->window_bytes;
		s->st.windows++;
		if (s->window_bytes > s->st.max_window_bytes)
			s->st.max_window_bytes = s->window_bytes;
		s->window_bytes = 0;
	}
	return 0;
}

/* Wait until `acc` more bytes fit the window's budget. Returns 0 when they
 * fit, KD_SEND_DEADLINE if the virtual clock reached the deadline first. */
static int rate_wait(kd_sender *s, uint64_t acc, uint64_t deadline)
{
	uint64_t budget = s->cfg.rate_limit / 10;

	for (;;) {
		uint64_t now = now_ns(s), end;
		roll_window(s, now);
		if (s->window_bytes + acc <= budget)
			return 0;
		end = s->epoch + (s->window + 1) * KD_SEND_WINDOW_NS;
		if (s->waited_window != s->window + 1) {
			s->waited_window = s->window + 1;
			s->st.rate_waits++;
		}
		if (s->virt) {
			uint64_t target = deadline && deadline < end ? deadline : end;
			if (target <= now)
				return KD_SEND_DEADLINE;
			s->st.wait_ns += target - now;
			s->now = target;
			if (target < end)
				return KD_SEND_DEADLINE;
		} else {
			struct timespec ts = {(time_t)(end / 1000000000ull),
					      (long)(end % 1000000000ull)};
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
			s->st.wait_ns += kd_clock_ns() - now;
		}
	}
}

KD_API int kd_sender_wait_budget(kd_sender *s, uint64_t deadline_ns)
{
	if (!s)
		return -EINVAL;
	if (!s->cfg.rate_limit)
		return KD_SEND_DONE;
	return rate_wait(s, PAGE_REC, s->virt ? deadline_ns : 0);
}

/* CLEAR the page's chunk if not yet done; returns 0 or negative errno. */
static int chunk_clear(kd_sender *s, const struct kd_send_region *r, uint64_t rel)
{
	uint64_t chunk = rel >> r->clear_shift, first = chunk << r->clear_shift;
	uint64_t num = (uint64_t)1 << r->clear_shift, bits = 0;
	int err;

	if (r->chunk_cleared_ns[chunk])
		return 0;
	if (num > r->npages - first)
		num = r->npages - first;
	err = kd_clear_dirty_log(r->vm, r->slot, first, (uint32_t)num,
				 r->clear_mask + first / 64);
	if (err)
		return err;
	if (s->virt) {
		for (uint64_t w = 0; w < (num + 63) / 64; w++)
			bits += (uint64_t)__builtin_popcountll(r->clear_mask[first / 64 + w]);
		s->now += s->cfg.clear_call_ns + bits * s->cfg.reprotect_ns;
	}
	s->st.clears++;
	r->chunk_cleared_ns[chunk] = now_ns(s) | 1; /* never 0 = "not cleared" */
	return 0;
}

static int check_region(const struct kd_send_region *r)
{
	if (!r || !r->memory || !r->npages || r->reserved ||
	    r->flags & ~KD_SEND_REGION_VERSIONS)
		return -EINVAL;
	if (!r->last_version != !r->sent)
		return -EINVAL;
	if (r->clear_shift) {
		if (r->clear_shift < 6 || r->clear_shift > 31 || !r->vm || !r->clear_mask ||
		    !r->chunk_cleared_ns)
			return -EINVAL;
	}
	return 0;
}

KD_API int kd_send_pages(kd_sender *s, const struct kd_send_region *r, const uint64_t *gfns,
			 uint64_t n, uint64_t *pos, uint64_t sample_ns, uint64_t deadline_ns)
{
	const kd_zero_fn is_zero = kd__zero_check(); /* one look-up per call */
	const uint8_t *mem;
	bool versions;
	int err;

	if (!s || !pos)
		return -EINVAL;
	err = check_region(r);
	if (err)
		return err;
	if (!gfns && n > r->npages)
		return -ERANGE;
	if (!s->virt)
		deadline_ns = 0;
	mem = r->memory;
	versions = r->flags & KD_SEND_REGION_VERSIONS;
	while (*pos < n) {
		uint64_t rel = gfns ? gfns[*pos] - r->base_gfn : *pos;
		uint64_t now, version = 0, sample, acc, rec;
		const uint8_t *page;
		int zero;

		if (rel >= r->npages)
			return -ERANGE;
		if (deadline_ns && s->now >= deadline_ns)
			return KD_SEND_DEADLINE;
		if (s->cfg.max_wait_ns && s->iter_pages && !(s->iter_pages & 63) &&
		    now_ns(s) - s->iter_start > s->cfg.max_wait_ns) {
			s->st.time_cap_exits++;
			return KD_SEND_TIME_CAP;
		}
		if (r->clear_shift) {
			err = chunk_clear(s, r, rel);
			if (err)
				return err;
			sample = r->chunk_cleared_ns[rel >> r->clear_shift];
		} else {
			sample = sample_ns;
		}
		if (versions) { /* the version is the page: nothing else to read */
			page = NULL;
			version = __atomic_load_n((const uint64_t *)mem + rel, __ATOMIC_RELAXED);
			zero = !version;
		} else {
			page = mem + rel * PAGE;
			zero = is_zero(page, PAGE);
		}
		rec = zero ? ZERO_REC : PAGE_REC;
		acc = zero && !(s->cfg.flags & KD_SEND_ZERO_AS_FULL) ? ZERO_REC : PAGE_REC;
		if (s->cfg.rate_limit) {
			if (s->cfg.flags & KD_SEND_RATE_YIELD) {
				roll_window(s, now_ns(s));
				if (s->window_bytes + acc > s->cfg.rate_limit / 10)
					return KD_SEND_RATE_LIMITED;
			}
			err = rate_wait(s, acc, deadline_ns);
			if (err)
				return err;
		}
		if (s->buf && s->model + rec > s->cap)
			return KD_SEND_FULL;
		if (s->buf) {
			uint8_t *o = s->buf + KD_WIRE_BATCH_HEADER + s->used;
			uint64_t gpa = (r->base_gfn + rel) << KD_PAGE_SHIFT;
			if (zero) {
				put_be64(o, gpa | KD_WIRE_ZERO);
				o[8] = 0;
				version = 0;
				s->pcrc = kd_crc32c(s->pcrc, o, ZERO_REC);
				s->used += ZERO_REC;
			} else if (versions) {
				put_be64(o, gpa | KD_WIRE_VERSION);
				put_be64(o + 8, version);
				s->pcrc = kd_crc32c(s->pcrc, o, KD_WIRE_VERSION_RECORD);
				s->used += KD_WIRE_VERSION_RECORD;
			} else {
				put_be64(o, gpa | KD_WIRE_PAGE);
				s->pcrc = kd_crc32c(s->pcrc, o, 8);
				/* copy and checksum in one read of the page: the CRC
				 * covers exactly the bytes that go out, even while a
				 * vCPU writes the page */
				s->pcrc = kd__crc32c_copy(s->pcrc, o + 8, page, PAGE);
				memcpy(&version, o + 8, 8); /* what was actually sent */
				s->used += rec;
			}
			s->model += rec;
			s->nrec++;
		} else if (!versions) {
			version = zero ? 0 : __atomic_load_n((const uint64_t *)page, __ATOMIC_RELAXED);
		}
		if (r->last_version) {
			uint64_t bit = 1ull << (rel & 63);
			if ((r->sent[rel >> 6] & bit) && r->last_version[rel] == version)
				s->st.redundant++;
			r->sent[rel >> 6] |= bit;
			/* stored only where it changes: a page zero on every send never
			 * touches (commits) its entry */
			if (r->last_version[rel] != version)
				r->last_version[rel] = version;
		}
		if (s->virt) {
			uint64_t x = s->cfg.link_bandwidth
				? rec * 1000000000ull + s->xfer_rem : 0;
			s->now += s->cfg.page_cost_ns;
			if (x) {
				s->now += x / s->cfg.link_bandwidth;
				s->xfer_rem = x % s->cfg.link_bandwidth;
			}
			now = s->now;
		} else {
			now = kd_clock_ns();
		}
		roll_window(s, now);
		s->window_bytes += acc;
		{
			uint64_t age = now > sample ? now - sample : 0;
			s->hist[kd_latency_bucket(age)]++;
			s->st.lat_count++;
			s->st.lat_sum_ns += age;
			if (age > s->st.lat_max_ns)
				s->st.lat_max_ns = age;
		}
		s->st.pages++;
		s->st.zero_pages += (uint64_t)zero;
		s->st.wire_bytes += rec;
		s->st.accounted_bytes += acc;
		s->iter_pages++;
		(*pos)++;
	}
	return KD_SEND_DONE;
}
