/*
 * migrate/wire_dest.c - the destination of the wire format (wire_encode.c
 * documents it): decodes a stream and applies it to its own memory, mapped
 * MAP_NORESERVE when the MEM_SIZE record announces the regions.
 *
 * The decoder checks magic, length, sequence and CRC of a whole batch before
 * applying any of its records, so a corrupted batch changes nothing; records
 * outside the announced regions, unknown flags, data after EOS, or a stream
 * that ends without EOS are errors, never a silent mismatch. Errors are
 * sticky and carry a sentence (kd_wire_dest_error).
 *
 * With page versions (kd_wire_dest_set_page_versions, the content-free page
 * model) a region is one 64-bit version per page, 0 = zero page: VERSION
 * records store the version, ZERO records store 0 where the page was not
 * already zero (so a page never sent nonzero never commits its entry), and a
 * PAGE record is an error, as a VERSION record is on a destination of
 * contents.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "wire_dest.h"
#include "wire_format.h"

#define PAGE KD_PAGE

struct kd_wire_dest {
	struct kd_dest_region *r;
	uint64_t *prefix; /* linear offset of each region (address order) */
	uint64_t total;
	uint32_t nregions;
	uint32_t last;
	int failed;   /* sticky negative errno */
	int eos;
	int versions; /* regions hold a uint64 version per page */
	struct kd_wire_dest_stats st;
	char error[160];
	struct kd_prefault pf;
};

KD_API int kd_wire_dest_create(kd_wire_dest **out)
{
	kd_wire_dest *d;

	if (!out)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	kd_prefault_init(&d->pf); /* off unless asked: see kd_wire_dest_set_prefault */
	*out = d;
	return 0;
}

KD_API int kd_wire_dest_set_prefault(kd_wire_dest *d, uint64_t ahead_bytes)
{
	if (!d || (ahead_bytes & (PAGE - 1)))
		return -EINVAL;
	if (d->pf.running || d->nregions)
		return -EBUSY; /* before the stream starts */
	d->pf.ahead = ahead_bytes;
	return 0;
}

KD_API int kd_wire_dest_set_page_versions(kd_wire_dest *d, int on)
{
	if (!d)
		return -EINVAL;
	if (d->nregions || d->st.batches)
		return -EBUSY; /* before the stream starts */
	d->versions = !!on;
	return 0;
}

/* Bytes mapped for a region: its pages, or their versions. */
static uint64_t map_bytes(const kd_wire_dest *d, const struct kd_dest_region *r)
{
	return d->versions ? r->size / PAGE * 8 : r->size;
}

KD_API void kd_wire_dest_destroy(kd_wire_dest *d)
{
	if (!d)
		return;
	kd_prefault_destroy(&d->pf);
	free(d->prefix);
	for (uint32_t i = 0; i < d->nregions; i++)
		if (d->r[i].mem)
			munmap(d->r[i].mem, map_bytes(d, &d->r[i]));
	for (uint32_t i = 0; i < d->nregions; i++)
		free(d->r[i].written);
	free(d->r);
	free(d);
}

static int fail(kd_wire_dest *d, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail(kd_wire_dest *d, int err, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(d->error, sizeof(d->error), "batch %llu: ",
			 (unsigned long long)d->st.batches);
	va_start(ap, fmt);
	vsnprintf(d->error + n, sizeof(d->error) - (size_t)n, fmt, ap);
	va_end(ap);
	d->failed = err;
	return err;
}

static struct kd_dest_region *find_region(kd_wire_dest *d, uint64_t gpa)
{
	struct kd_dest_region *r = &d->r[d->last];
	uint32_t lo = 0, hi = d->nregions;

	if (d->nregions && gpa - r->gpa < r->size)
		return r;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (gpa < d->r[mid].gpa)
			hi = mid;
		else if (gpa - d->r[mid].gpa >= d->r[mid].size)
			lo = mid + 1;
		else {
			d->last = mid;
			return &d->r[mid];
		}
	}
	return NULL;
}

static int cmp_region(const void *a, const void *b)
{
	const struct kd_dest_region *x = a, *y = b;
	return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

/*
 * The MEM_SIZE record's region list at p (left bytes) for a claimed total:
 * the region count, each region page aligned, non-empty and not wrapping,
 * no overlap, their sizes summing to the total. On success *out holds the
 * regions sorted by address (calloc'd, the caller's) and *count their number.
 * kd_wire_dest_feed (apply_mem_size) and kd_wire_dest_peek_mem_size both
 * judge the record here, so a claim peeked is the claim applied.
 */
static int parse_mem_size(kd_wire_dest *d, const uint8_t *p, uint64_t left, uint64_t total,
			  struct kd_dest_region **out, uint32_t *count)
{
	struct kd_dest_region *r;
	uint32_t n;
	uint64_t sum = 0;

	if (d->nregions)
		return fail(d, -EPROTO, "a second MEM_SIZE record");
	if (left < 4)
		return fail(d, -EPROTO, "MEM_SIZE record cut short");
	n = get_be32(p);
	if (n == 0 || n > KD_WIRE_MAX_REGIONS || left < 4 + 16ull * n)
		return fail(d, -EPROTO, "MEM_SIZE record with a bad region count %u", n);
	r = calloc(n, sizeof(*r));
	if (!r)
		return fail(d, -ENOMEM, "out of memory for %u regions", n);
	for (uint32_t i = 0; i < n; i++) {
		r[i].gpa = get_be64(p + 4 + 16 * i);
		r[i].size = get_be64(p + 12 + 16 * i);
		if ((r[i].gpa | r[i].size) & (PAGE - 1) || !r[i].size ||
		    r[i].gpa + r[i].size < r[i].gpa) {
			free(r);
			return fail(d, -EPROTO, "MEM_SIZE region %u not page aligned", i);
		}
		sum += r[i].size;
	}
	qsort(r, n, sizeof(*r), cmp_region);
	for (uint32_t i = 1; i < n; i++)
		if (r[i - 1].gpa + r[i - 1].size > r[i].gpa) {
			free(r);
			return fail(d, -EPROTO, "MEM_SIZE regions overlap");
		}
	if (sum != total) {
		free(r);
		return fail(d, -EPROTO, "MEM_SIZE total %llu != sum of regions %llu",
			    (unsigned long long)total, (unsigned long long)sum);
	}
	*out = r;
	*count = n;
	return 0;
}

static int apply_mem_size(kd_wire_dest *d, const uint8_t *p, uint64_t left, uint64_t total,
			  uint64_t *used)
{
	uint32_t n;
	int r = parse_mem_size(d, p, left, total, &d->r, &n);

	if (r)
		return r;
	for (uint32_t i = 0; i < n; i++) {
		void *m = mmap(NULL, map_bytes(d, &d->r[i]), PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED) {
			d->nregions = i;
			return fail(d, -ENOMEM, "cannot map %llu bytes of destination memory",
				    (unsigned long long)map_bytes(d, &d->r[i]));
		}
		if (d->versions) { /* 4 KiB blocks of versions, committed where written */
			d->r[i].mem = m;
			continue;
		}
		/* 2 MiB pages where the kernel has them: one fault (and one zeroing)
		 * per 512 pages received instead of one per page; untouched
		 * ranges still cost nothing (MAP_NORESERVE) */
#ifdef MADV_HUGEPAGE
		madvise(m, d->r[i].size, MADV_HUGEPAGE);
#endif
		d->r[i].mem = m;
		d->r[i].written = calloc((d->r[i].size / PAGE + 63) / 64, 8);
		if (!d->r[i].written) {
			d->nregions = i + 1;
			return fail(d, -ENOMEM, "out of memory for the page map of %llu bytes",
				    (unsigned long long)d->r[i].size);
		}
	}
	d->nregions = n;
	d->st.regions = n;
	d->st.guest_bytes = total;
	d->prefix = malloc(n * sizeof(*d->prefix));
	if (!d->prefix)
		return fail(d, -ENOMEM, "out of memory for %u regions", n);
	{
		uint64_t at = 0;
		for (uint32_t i = 0; i < n; i++) {
			d->prefix[i] = at;
			at += d->r[i].size;
		}
	}
	d->total = total;
	if (!d->versions)
		kd_prefault_start(&d->pf, d->r, d->prefix, d->nregions, d->total);
	*used = 4 + 16ull * n;
	return 0;
}

/* Apply one verified batch payload. */
static int apply_payload(kd_wire_dest *d, const uint8_t *p, uint64_t len, uint32_t nrecords)
{
	uint64_t off = 0, pf_first = KD_PREFAULT_NO_HINT, pf_end = 0, pf_n = 0;
	uint32_t i;

	for (i = 0; i < nrecords; i++) {
		uint64_t hdr, addr, flag, used = 0, pg, bit;
		struct kd_dest_region *r;

		if (d->eos)
			return fail(d, -EPROTO, "record after end of stream");
		if (len - off < 8)
			return fail(d, -EPROTO, "record %u cut short", i);
		hdr = get_be64(p + off);
		off += 8;
		addr = hdr & ~(uint64_t)(PAGE - 1);
		flag = hdr & (PAGE - 1);
		if (flag != KD_WIRE_MEM_SIZE && flag != KD_WIRE_EOS && !d->nregions)
			return fail(d, -EPROTO, "page record before the MEM_SIZE record");
		switch (flag) {
		case KD_WIRE_MEM_SIZE: {
			int r2 = apply_mem_size(d, p + off, len - off, addr, &used);
			if (r2)
				return r2;
			off += used;
			break;
		}
		case KD_WIRE_ZERO:
		case KD_WIRE_PAGE:
		case KD_WIRE_VERSION:
			if ((flag == KD_WIRE_PAGE && d->versions) ||
			    (flag == KD_WIRE_VERSION && !d->versions))
				return fail(d, -EPROTO, "record %u: a %s record on a destination "
					    "of page %s", i, d->versions ? "page" : "version",
					    d->versions ? "versions" : "contents");
			r = find_region(d, addr);
			if (!r)
				return fail(d, -ERANGE, "page at %#llx is outside every region",
					    (unsigned long long)addr);
			pg = (addr - r->gpa) / PAGE;
			bit = 1ull << (pg & 63);
			if (d->versions) {
				uint64_t *v = (uint64_t *)r->mem + pg, ver = 0;
				if (flag == KD_WIRE_ZERO) {
					if (len - off < 1)
						return fail(d, -EPROTO, "zero record cut short");
					if (p[off++])
						return fail(d, -EPROTO, "zero record with a fill "
							    "byte on a destination of versions");
					d->st.zero_pages++;
				} else {
					if (len - off < 8)
						return fail(d, -EPROTO, "version record cut short");
					ver = get_be64(p + off);
					off += 8;
					d->st.pages++;
				}
				if (*v != ver) /* unchanged entries stay uncommitted */
					*v = ver;
				break;
			}
			if (flag == KD_WIRE_ZERO) {
				uint8_t fill;
				if (len - off < 1)
					return fail(d, -EPROTO, "zero record cut short");
				fill = p[off++];
				/* a page never written is still zero: neither read nor
				 * populate it (a read would fault in the zero page) */
				if (fill || (r->written[pg >> 6] & bit)) {
					memset(r->mem + pg * PAGE, fill, PAGE);
					r->written[pg >> 6] |= bit;
				}
				d->st.zero_pages++;
			} else {
				if (len - off < PAGE)
					return fail(d, -EPROTO, "page record cut short");
				memcpy(r->mem + pg * PAGE, p + off, PAGE);
				r->written[pg >> 6] |= bit;
				{
					uint64_t lin = d->prefix[r - d->r] + pg * PAGE;
					if (pf_first == KD_PREFAULT_NO_HINT)
						pf_first = lin;
					pf_end = lin + PAGE;
					pf_n++;
				}
				off += PAGE;
				d->st.pages++;
			}
			break;
		case KD_WIRE_EOS:
			if (addr)
				return fail(d, -EPROTO, "EOS record with an address");
			d->eos = 1;
			break;
		default:
			return fail(d, -EPROTO, "record %u has unknown flags %#llx", i,
				    (unsigned long long)flag);
		}
		d->st.records++;
	}
	if (off != len)
		return fail(d, -EPROTO, "%llu bytes after the last record",
			    (unsigned long long)(len - off));
	if (d->eos)
		kd_prefault_finish(&d->pf);
	else if (pf_n)
		kd_prefault_hint(&d->pf, pf_first, pf_end, pf_n);
	return 0;
}

/*
 * The batch header at h (avail bytes from h on): magic, payload length,
 * sequence, then, once the whole batch is there, its CRC32C. 0: a whole
 * batch, *plen its payload; 1: incomplete (wait for more); else the
 * sticky error.
 */
static int check_batch(kd_wire_dest *d, const uint8_t *h, uint64_t avail, uint32_t *plen)
{
	uint64_t seq = get_be64(h + 8);
	uint32_t crc;

	*plen = get_be32(h + 4);
	if (get_be32(h) != KD_WIRE_BATCH_MAGIC)
		return fail(d, -EBADMSG, "bad magic %#x (not a batch header)", get_be32(h));
	if (*plen > KD_WIRE_MAX_PAYLOAD)
		return fail(d, -EBADMSG, "payload length %u exceeds %u", *plen,
			    KD_WIRE_MAX_PAYLOAD);
	if (seq != d->st.batches)
		return fail(d, -EBADMSG, "sequence number %llu, expected %llu",
			    (unsigned long long)seq, (unsigned long long)d->st.batches);
	if (avail - KD_WIRE_BATCH_HEADER < *plen)
		return 1;
	crc = kd_crc32c(0, h, 20);
	crc = kd_crc32c(crc, h + KD_WIRE_BATCH_HEADER, *plen);
	if (crc != get_be32(h + 20))
		return fail(d, -EBADMSG, "checksum mismatch (crc32c %#x, header says %#x)", crc,
			    get_be32(h + 20));
	return 0;
}

KD_API int kd_wire_dest_feed(kd_wire_dest *d, const void *buf, uint64_t len, uint64_t *consumed)
{
	const uint8_t *b = buf;
	uint64_t off = 0;
	int r = 0;

	if (!d || !consumed || (!buf && len))
		return -EINVAL;
	*consumed = 0;
	if (d->failed)
		return d->failed;
	while (!d->eos && len - off >= KD_WIRE_BATCH_HEADER) {
		const uint8_t *h = b + off;
		uint32_t plen;

		r = check_batch(d, h, len - off, &plen);
		if (r > 0)
			break; /* incomplete: wait for more */
		if (r)
			return r;
		r = apply_payload(d, h + KD_WIRE_BATCH_HEADER, plen, get_be32(h + 16));
		if (r)
			return r;
		off += KD_WIRE_BATCH_HEADER + plen;
		d->st.batches++;
		d->st.bytes += KD_WIRE_BATCH_HEADER + plen;
		*consumed = off;
	}
	if (d->eos && off < len)
		return fail(d, -EPROTO, "%llu bytes after end of stream",
			    (unsigned long long)(len - off));
	return d->eos ? 1 : 0;
}

KD_API int kd_wire_dest_peek_mem_size(kd_wire_dest *d, const void *buf, uint64_t len,
				      uint64_t *total, uint32_t *nregions)
{
	const uint8_t *b = buf;
	struct kd_dest_region *regions;
	uint64_t hdr;
	uint32_t plen, n;
	int r;

	if (!d || !total || !nregions || (!buf && len))
		return -EINVAL;
	*total = 0;
	*nregions = 0;
	if (d->failed)
		return d->failed;
	if (d->nregions || d->eos)
		return 0; /* the claim was applied, or the stream is over */
	if (len < KD_WIRE_BATCH_HEADER)
		return -EAGAIN;
	r = check_batch(d, b, len, &plen);
	if (r)
		return r > 0 ? -EAGAIN : r;
	if (!get_be32(b + 16) || plen < 8)
		return 0; /* no record to read: feed judges the batch */
	hdr = get_be64(b + KD_WIRE_BATCH_HEADER);
	if ((hdr & (PAGE - 1)) != KD_WIRE_MEM_SIZE)
		return 0; /* not a claim: feed judges the record */
	r = parse_mem_size(d, b + KD_WIRE_BATCH_HEADER + 8, plen - 8,
			   hdr & ~(uint64_t)(PAGE - 1), &regions, &n);
	if (r)
		return r;
	free(regions);
	*total = hdr & ~(uint64_t)(PAGE - 1);
	*nregions = n;
	return 1;
}

KD_API int64_t kd_wire_dest_need(kd_wire_dest *d, const void *buf, uint64_t len)
{
	const uint8_t *b = buf;

	if (!d || (!buf && len))
		return -EINVAL;
	if (len < KD_WIRE_BATCH_HEADER)
		return KD_WIRE_BATCH_HEADER;
	if (get_be32(b + 4) > KD_WIRE_MAX_PAYLOAD)
		return KD_WIRE_BATCH_HEADER; /* feed reports the error */
	return KD_WIRE_BATCH_HEADER + (int64_t)get_be32(b + 4);
}

KD_API int kd_wire_dest_finish(kd_wire_dest *d, uint64_t leftover)
{
	if (!d)
		return -EINVAL;
	if (d->failed)
		return d->failed;
	if (!d->eos) {
		if (leftover)
			return fail(d, -EPIPE, "stream truncated: %llu bytes of an incomplete batch "
				    "and no end-of-stream record", (unsigned long long)leftover);
		return fail(d, -EPIPE, "stream truncated: no end-of-stream record");
	}
	return 0;
}

KD_API const char *kd_wire_dest_error(const kd_wire_dest *d)
{
	return d && d->failed ? d->error : NULL;
}

KD_API int kd_wire_dest_stats(const kd_wire_dest *d, struct kd_wire_dest_stats *out)
{
	if (!d || !out)
		return -EINVAL;
	*out = d->st;
	out->eos = (uint64_t)d->eos;
	out->prefaulted = __atomic_load_n(&d->pf.bytes, __ATOMIC_RELAXED);
	return 0;
}

KD_API int kd_wire_dest_region(const kd_wire_dest *d, uint32_t index, uint64_t *gpa,
			       uint64_t *size, void **memory)
{
	if (!d || !gpa || !size || !memory)
		return -EINVAL;
	if (index >= d->nregions)
		return -ENOENT;
	*gpa = d->r[index].gpa;
	*size = d->r[index].size;
	*memory = d->r[index].mem;
	return 0;
}
