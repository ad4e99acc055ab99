/*
 * kvmdirty/migrate.h - the migration side of libkvmdirty, built on the VM
 * API of kvmdirty/vm.h (kvmdirty.h, the umbrella, includes both): vCPU thread
 * pools (writers, real-time workload threads), the wire format and its
 * destination, the scan-and-send loop, workload generators.
 * Sources: csrc/migrate/.
 */
#ifndef KVMDIRTY_MIGRATE_H
#define KVMDIRTY_MIGRATE_H

#include "kvmdirty/vm.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Writer threads: real pthreads acting as vCPUs, for concurrency tests and
 * real-time workloads. Thread i runs vCPU i and writes gfns[i] (n[i] gfns)
 * `loops` times, storing `value` (+ loop index). On a ring-full exit it waits
 * until the ring is reset, then resumes. kd_writers_join waits for them and
 * fills applied[i] (gfns written). A writer stops early on kd_writers_stop.
 * From start to join the pool holds the VM (kd_vm_hold): memslot changes
 * fail with -EBUSY meanwhile. -EINVAL bad arguments or nthreads > nvcpus;
 * -EFAULT NULL gfns[i] with n[i] > 0; -EAGAIN no thread.
 */
typedef struct kd_writers kd_writers;
KD_API int kd_writers_start(kd_vm *vm, uint32_t nthreads, const uint64_t *const *gfns,
			    const uint64_t *n, uint64_t loops, uint64_t value, kd_writers **out);
KD_API void kd_writers_stop(kd_writers *w);
/* Wait until every thread has ended, without freeing anything: another
 * thread may call kd_writers_stop meanwhile (a join that frees could not
 * allow that). One caller at a time; kd_writers_join then only collects
 * and frees. 0, or -EINVAL for NULL. */
KD_API int kd_writers_wait(kd_writers *w);
KD_API int kd_writers_join(kd_writers *w, uint64_t *applied);

/* Wire format (csrc/migrate/wire_encode.c documents it): per record a be64 of address | flag;
 * records travel in batches with a 24-byte header carrying a CRC32C. */
#define KD_WIRE_ZERO 0x02u
#define KD_WIRE_MEM_SIZE 0x04u
#define KD_WIRE_PAGE 0x08u
#define KD_WIRE_EOS 0x10u
#define KD_WIRE_VERSION 0x20u /* content-free model: a page's 64-bit version */
#define KD_WIRE_VERSION_RECORD 16u
#define KD_WIRE_BATCH_MAGIC 0x4b444231u /* "KDB1" */
#define KD_WIRE_BATCH_HEADER 24u
#define KD_WIRE_ZERO_RECORD 9u
#define KD_WIRE_PAGE_RECORD 4104u
#define KD_WIRE_MAX_PAYLOAD 67108864u   /* 64 MiB */
#define KD_WIRE_MAX_REGIONS 32768u

/* CRC32C (Castagnoli) continuing from crc (0 to start); SSE4.2 when present. */
KD_API uint32_t kd_crc32c(uint32_t crc, const void *data, uint64_t len);
/* CRC32C of A || B from crc1 = CRC32C(A), crc2 = CRC32C(B), len2 = |B|. */
KD_API uint32_t kd_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);
/* Use the table CRC instead of SSE4.2 (on != 0), for tests; returns 0. */
KD_API int kd_crc32c_force_software(int on);
/* 1 if len bytes at buf are all zero, 0 if not (AVX2 or scalar), -EINVAL. */
KD_API int kd_buffer_is_zero(const void *buf, uint64_t len);
/* Zero check and CRC implementation: 0 scalar, 1 best (AVX2/SSE4.2), -1 query.
 * Returns the level now active (0 or 1) or -EINVAL. */
KD_API int kd_simd_select(int level);
/*
 * Compare two version arrays (KD_VM_PAGE_VERSIONS: source slot and
 * destination region) of n entries; 4 KiB blocks of entries that neither
 * side ever touched (not resident in either: both still zero) are skipped
 * unread. Returns the number of differing entries (>= 0), the first
 * min(that, cap) indices in first[]; -EINVAL.
 */
KD_API int64_t kd_versions_diff(const uint64_t *a, const uint64_t *b, uint64_t n,
				uint64_t *first, uint32_t cap);
/* Number of all-zero pages among npages pages at memory, or -EINVAL. */
KD_API int64_t kd_count_zero_pages(const void *memory, uint64_t npages);
/* Read len bytes as 64-bit words (a plain streaming read, the bandwidth
 * reference for zero detection); returns a checksum >= 0 or -EINVAL. */
KD_API int64_t kd_read_bandwidth_probe(const void *memory, uint64_t len);
/* 64-bit hash of each of npages pages into out[npages] (verification). */
KD_API int kd_page_hashes(const void *memory, uint64_t npages, uint64_t *out);
/* CRC32C of each of n sampled 4 KiB pages (indices pages[n] into the npages
 * pages at memory) into out[n] (dirty-rate page sampling); -EINVAL if any
 * index is >= npages (then nothing is hashed). */
KD_API int kd_sample_page_crc32c(const void *memory, uint64_t npages, const uint64_t *pages,
				 uint64_t n, uint32_t *out);
/* Write a batch header (magic, length, seq, count, CRC) before payload_len
 * bytes of records at buf + KD_WIRE_BATCH_HEADER. */
KD_API int kd_wire_seal_batch(void *buf, uint64_t payload_len, uint32_t nrecords, uint64_t seq);
/* The same with the payload's CRC32C already known (computed while encoding). */
KD_API int kd_wire_seal_batch_crc(void *buf, uint64_t payload_len, uint32_t nrecords,
				  uint64_t seq, uint32_t payload_crc);
/* Encode a MEM_SIZE record (region layout); returns bytes used, -ENOSPC, -EINVAL. */
KD_API int64_t kd_wire_put_mem_size(void *buf, uint64_t cap, const uint64_t *gpas,
				     const uint64_t *sizes, uint32_t nregions);
/* Encode an EOS record; returns 8, -ENOSPC or -EINVAL. */
KD_API int64_t kd_wire_put_eos(void *buf, uint64_t cap);

/* Destination: decodes a stream and applies it to its own memory (mapped
 * MAP_NORESERVE on the MEM_SIZE record). Errors are sticky. */
typedef struct kd_wire_dest kd_wire_dest;
struct kd_wire_dest_stats {
	uint64_t batches, records, pages, zero_pages, bytes;
	uint64_t regions, guest_bytes, eos;
	uint64_t prefaulted; /* destination bytes populated ahead of the stream */
	uint64_t reserved[7];
};
KD_API int kd_wire_dest_create(kd_wire_dest **out);
KD_API void kd_wire_dest_destroy(kd_wire_dest *d);
/* While the stream writes densely in address order, a helper thread populates
 * destination memory (MADV_POPULATE_WRITE) up to ahead_bytes past the writer
 * (0 = off, the default; e.g. 64 MiB). Before the first feed; -EBUSY after. */
KD_API int kd_wire_dest_set_prefault(kd_wire_dest *d, uint64_t ahead_bytes);
/* Apply the complete batches in buf; *consumed = bytes used. Returns 1 once
 * EOS was applied, 0 if more is needed, -EBADMSG (magic, sequence, CRC),
 * -EPROTO (bad record), -ERANGE (page outside the regions), -ENOMEM. */
KD_API int kd_wire_dest_feed(kd_wire_dest *d, const void *buf, uint64_t len, uint64_t *consumed);
/* The guest size a stream claims, before anything is mapped: buf holds
 * the next whole batch (header + payload) not yet fed. Returns 1 with
 * *total (bytes) and *nregions when its first record is the MEM_SIZE
 * record and feed would accept it (the same checks: header, sequence, CRC,
 * region count, alignment, overlap, sum); 0 when the batch carries no
 * claim (no record, another record first, or the claim was applied
 * already); -EAGAIN if buf holds less than the whole batch; else the error
 * feed would return, sticky, with its sentence (kd_wire_dest_error). */
KD_API int kd_wire_dest_peek_mem_size(kd_wire_dest *d, const void *buf, uint64_t len,
				      uint64_t *total, uint32_t *nregions);
/* Bytes needed for the batch starting at buf (header + payload), or -EINVAL. */
KD_API int64_t kd_wire_dest_need(kd_wire_dest *d, const void *buf, uint64_t len);
/* The stream ended with leftover unconsumed bytes: 0 if EOS was seen, else
 * -EPIPE (truncated) or the sticky error. */
KD_API int kd_wire_dest_finish(kd_wire_dest *d, uint64_t leftover);
/* Sentence describing the sticky error, or NULL. */
KD_API const char *kd_wire_dest_error(const kd_wire_dest *d);
KD_API int kd_wire_dest_stats(const kd_wire_dest *d, struct kd_wire_dest_stats *out);
/* The content-free page model (KD_VM_PAGE_VERSIONS): the destination keeps
 * one 64-bit version per page (regions mapped at 8 bytes per page) and
 * applies VERSION and ZERO records; a PAGE record is then -EPROTO, as a
 * VERSION record is without it. Before the first feed; -EBUSY after. */
KD_API int kd_wire_dest_set_page_versions(kd_wire_dest *d, int on);
/* Region index's address, size and memory (with page versions: the
 * region's version array, size / 4096 entries); -ENOENT past the last. */
KD_API int kd_wire_dest_region(const kd_wire_dest *d, uint32_t index, uint64_t *gpa,
			       uint64_t *size, void **memory);

/* Sender: the scan-and-send loop (sendpath.c). */
#define KD_SEND_VIRTUAL_CLOCK (1u << 0) /* deterministic clock and cost model */
#define KD_SEND_ZERO_AS_FULL (1u << 1)  /* charge zero pages as full pages */
/* Out of budget: return KD_SEND_RATE_LIMITED instead of waiting inside
 * kd_send_pages; the caller waits with kd_sender_wait_budget (QEMU 2010's
 * iothread left ram_save_live when rate limited, dropping the global lock). */
#define KD_SEND_RATE_YIELD (1u << 2)
#define KD_SEND_WINDOW_NS 100000000ull  /* rate-limit window (QEMU BUFFER_DELAY) */
#define KD_LAT_BUCKETS 1024u
/* kd_send_pages results (>= 0) */
#define KD_SEND_DONE 0
#define KD_SEND_FULL 1      /* batch buffer full: kd_sender_flush, call again */
#define KD_SEND_TIME_CAP 2  /* max_wait_ns since kd_sender_iteration_begin */
#define KD_SEND_DEADLINE 3  /* virtual clock reached deadline_ns */
#define KD_SEND_RATE_LIMITED 4 /* KD_SEND_RATE_YIELD: the window's budget is spent */

struct kd_send_config {
	uint64_t rate_limit;     /* bytes/s, budget rate_limit/10 per window; 0 = none */
	uint64_t max_wait_ns;    /* time cap, checked every 64 pages; 0 = none */
	uint64_t link_bandwidth; /* virtual: record transfer bytes/s; 0 = instant */
	uint64_t page_cost_ns;   /* virtual: read + zero check per page */
	uint64_t clear_call_ns;  /* virtual: per chunk CLEAR call */
	uint64_t reprotect_ns;   /* virtual: per page re-protected by a CLEAR */
	uint32_t flags;          /* KD_SEND_* */
	uint32_t reserved[3];    /* must be zero */
};

struct kd_send_stats {
	uint64_t pages;           /* page records sent (PAGE and ZERO) */
	uint64_t zero_pages;
	uint64_t wire_bytes;      /* record bytes encoded (headers of batches apart) */
	uint64_t header_bytes;    /* batch header bytes */
	uint64_t accounted_bytes; /* bytes charged to the rate limiter */
	uint64_t redundant;       /* sent although unchanged since its last send */
	uint64_t batches;
	uint64_t rate_waits;      /* windows in which the limiter made the loop wait */
	uint64_t wait_ns;
	uint64_t time_cap_exits;
	uint64_t clears;          /* chunk CLEAR calls */
	uint64_t windows;         /* windows closed with bytes in them */
	uint64_t max_window_bytes;
	uint64_t lat_count, lat_sum_ns, lat_max_ns;
	uint64_t reserved[8];
};

/* A range of guest memory to send from. last_version/sent (both or neither)
 * are per-page bookkeeping the caller keeps across passes (last_version is
 * stored only where it changes: an entry of a page that was zero on every
 * send is never written, so MAP_NORESERVE arrays cost only what the guest
 * dirtied). With KD_SEND_REGION_VERSIONS, memory holds one 64-bit version
 * per page (KD_VM_PAGE_VERSIONS), 0 = zero page: nothing is read or copied
 * but the version; an encoding sender writes a VERSION record (16 bytes)
 * and counts, charges and paces the page as the PAGE record (4104 bytes) it
 * stands for, so the figures of both models agree. With clear_shift
 * (6..31), the chunk of a page is CLEARed (mask = clear_mask, slot-relative,
 * the GET snapshot) before its first page is sent; chunk_cleared_ns[chunk]
 * (0 = not yet) records when. */
struct kd_send_region {
	const void *memory;
	uint64_t base_gfn;
	uint64_t npages;
	uint64_t *last_version;  /* first 8 bytes of each page when last sent */
	uint64_t *sent;          /* bitmap: page sent before */
	kd_vm *vm;
	uint32_t slot;
	uint32_t clear_shift;
	const uint64_t *clear_mask;
	uint64_t *chunk_cleared_ns;
	uint32_t flags;          /* KD_SEND_REGION_* */
	uint32_t reserved;       /* must be zero */
};
#define KD_SEND_REGION_VERSIONS (1u << 0)

typedef struct kd_sender kd_sender;
/* -EINVAL: unknown flags, reserved set, a budget below one page record, or a
 * cost model without the virtual clock. */
KD_API int kd_sender_create(const struct kd_send_config *cfg, kd_sender **out);
KD_API void kd_sender_destroy(kd_sender *s);
/* Virtual clock: new per-page read cost and link bandwidth (bytes/s, 0 =
 * instant) from now on; -EINVAL on a real-clock sender. */
KD_API int kd_sender_set_costs(kd_sender *s, uint64_t page_cost_ns, uint64_t link_bandwidth);
KD_API int kd_sender_set_rate_limit(kd_sender *s, uint64_t rate_limit);
/* Batch buffer (cap >= header + one page record); NULL counts without
 * encoding. -EBUSY while a batch is open. */
KD_API int kd_sender_set_buffer(kd_sender *s, void *buf, uint64_t cap);
/* Log each closed window's charged bytes into log[0..cap). */
KD_API int kd_sender_set_window_log(kd_sender *s, uint64_t *log, uint64_t cap);
/* Log the current window now (end of a run). */
KD_API int kd_sender_close_window(kd_sender *s);
/* Seal the open batch; *len = its bytes (0 if empty). */
KD_API int kd_sender_flush(kd_sender *s, uint64_t *len);
/* Control records, never rate limited: KD_SEND_DONE, KD_SEND_FULL or -errno. */
KD_API int kd_sender_put_mem_size(kd_sender *s, const uint64_t *gpas, const uint64_t *sizes,
				  uint32_t nregions);
KD_API int kd_sender_put_eos(kd_sender *s);
/* The sender's clock (virtual, or CLOCK_MONOTONIC); advance: virtual only. */
KD_API uint64_t kd_sender_now(const kd_sender *s);
KD_API int kd_sender_advance(kd_sender *s, uint64_t ns);
/* Start of an iteration: the time cap counts from here. */
KD_API int kd_sender_iteration_begin(kd_sender *s);
/*
 * Send pages gfns[*pos..n) of region r (gfns NULL: slot-relative pages
 * *pos..n), advancing *pos. sample_ns: when their dirty information was
 * sampled (sender clock). deadline_ns: virtual clock only, 0 = none.
 * Returns KD_SEND_DONE/FULL/TIME_CAP/DEADLINE, -ERANGE (page outside r),
 * -EINVAL, or the CLEAR's error.
 */
KD_API int kd_send_pages(kd_sender *s, const struct kd_send_region *r, const uint64_t *gfns,
			 uint64_t n, uint64_t *pos, uint64_t sample_ns, uint64_t deadline_ns);
/* Wait until a page record fits the rate budget: KD_SEND_DONE, or
 * KD_SEND_DEADLINE (virtual clock) if deadline_ns came first. */
KD_API int kd_sender_wait_budget(kd_sender *s, uint64_t deadline_ns);
KD_API int kd_sender_stats(const kd_sender *s, struct kd_send_stats *out);
/* Copy (nbuckets == KD_LAT_BUCKETS) and optionally reset the latency histogram. */
KD_API int kd_sender_latency_histogram(kd_sender *s, uint64_t *out, uint32_t nbuckets,
				       int reset);
/* Lowest latency (ns) counted in a histogram bucket. */
KD_API uint64_t kd_latency_bucket_floor(uint32_t bucket);

/* Workload generators (workload.c documents each). */
enum kd_workload_kind {
	KD_WL_IDLE = 0,
	KD_WL_UNIFORM = 1,
	KD_WL_HOTSPOT = 2,
	KD_WL_ZIPF = 3,
	KD_WL_SEQUENTIAL = 4,
	KD_WL_MIGRATION_TEST = 5,
};
struct kd_workload_config {
	uint32_t kind;          /* enum kd_workload_kind */
	uint32_t reserved0;     /* must be zero */
	uint64_t seed;
	uint64_t first_gfn;     /* pages [first_gfn, first_gfn + npages) */
	uint64_t npages;
	double hot_fraction;    /* hotspot: share of pages that are hot, (0, 1] */
	double hot_share;       /* hotspot: share of writes to them, [0, 1] */
	double zipf_s;          /* zipf: exponent, (0, 10] */
	uint64_t reserved[4];   /* must be zero */
};
typedef struct kd_workload kd_workload;
KD_API int kd_workload_create(const struct kd_workload_config *cfg, kd_workload **out);
KD_API void kd_workload_destroy(kd_workload *w);
/* Up to n next gfns (fewer at the end of a sweep); *value_hint (may be NULL)
 * is the value to store (migration test) or 0. Returns the count or -EINVAL. */
KD_API int64_t kd_workload_generate(kd_workload *w, uint64_t *gfns, uint64_t n,
				    uint64_t *value_hint);

/*
 * One guest entry of a generated workload, in one call: up to n next gfns of
 * w into gfns[] (the caller's buffer: it keeps them, for a recorder or to
 * retry after a ring-full exit), then kd_write of them as vCPU vcpu, storing
 * the generator's value hint or, where it has none, value. res is kd_write's
 * (what was applied, the exit, the write-side events the entry caused).
 * Returns the number of gfns generated (>= 0; res->applied of them written,
 * in order) or -errno: kd_workload_generate's or kd_write's (then nothing
 * was written, though the generator has moved on). *value_used (may be
 * NULL) gets the value stored.
 */
KD_API int64_t kd_workload_enter(kd_workload *w, kd_vm *vm, uint32_t vcpu, uint64_t *gfns,
				 uint64_t n, uint64_t value, uint64_t *value_used,
				 struct kd_write_result *res);

/* Real-time workload: thread i runs wls[i] as vCPU i at rate/nthreads pages/s
 * (rate 0: as fast as it can), storing unique values from value_base up; on a
 * ring-full exit it waits for the reset. The workloads must outlive it.
 * From start to stop the threads hold the VM (kd_vm_hold): memslot changes
 * fail with -EBUSY meanwhile. */
typedef struct kd_workload_threads kd_workload_threads;
struct kd_workload_thread_stats {
	uint64_t writes;
	uint64_t ring_full_waits;
	int64_t error; /* first kd_write error, or 0 */
};
KD_API int kd_workload_threads_start(kd_vm *vm, kd_workload *const *wls, uint32_t nthreads,
				     uint64_t rate, uint64_t value_base,
				     kd_workload_threads **out);
/* Throttle all threads by percent (0..99), as QEMU's cpu-throttle. */
KD_API int kd_workload_threads_throttle(kd_workload_threads *t, uint32_t percent);
/* Stop, join and free; out[0..cap) gets per-thread stats. Returns the first
 * thread error or 0. */
KD_API int kd_workload_threads_stop(kd_workload_threads *t, struct kd_workload_thread_stats *out,
				    uint32_t cap);

/*
 * The global lock (QEMU's BQL) and the guest exits that take it
 * (migrate/guest_exits.c explains the model). Real time: the migration loop
 * calls kd_bql_lock/unlock, vCPU threads kd_bql_poll. Virtual clock
 * (KD_BQL_VIRTUAL): the loop records holds with kd_bql_hold, then
 * kd_bql_model plays the exits of [t0, t1) against them (once).
 */
enum kd_bql_holder {
	KD_BQL_HOLDER_NONE = 0,      /* the lock was free */
	KD_BQL_HOLDER_ITERATION = 1, /* a migration iteration (iothread: sync + send) */
	KD_BQL_HOLDER_SYNC = 2,      /* the dirty-bitmap sync (migration thread) */
	KD_BQL_HOLDER_EXIT = 3,      /* another vCPU's exit */
	KD_BQL_HOLDER_COLLECT = 4,   /* another collector call (kernel-lock model) */
};
#define KD_BQL_VIRTUAL 1u
struct kd_bql_config {
	uint32_t nvcpus;           /* 1..KD_MAX_VCPUS */
	uint32_t flags;            /* KD_BQL_VIRTUAL */
	uint64_t exit_interval_ns; /* guest run time between two exits of a vCPU; 0: none */
	uint64_t service_ns;       /* lock held per exit; < exit_interval_ns */
	uint64_t reserved[2];      /* must be zero */
};
enum { KD_BQL_EV_WAIT = 1, KD_BQL_EV_HOLD = 2 };
struct kd_bql_event {
	uint64_t at_ns;  /* exit arrival (WAIT) or hold start (HOLD) */
	uint64_t dur_ns; /* the wait, or the hold */
	uint16_t type;   /* KD_BQL_EV_* */
	uint16_t holder; /* WAIT: what held the lock at arrival; HOLD: the holder */
	uint32_t vcpu;   /* WAIT: the vCPU; HOLD: UINT32_MAX */
};
struct kd_bql_stats {
	uint64_t exits, waited_exits;  /* exits, and those that found the lock held */
	uint64_t wait_sum_ns, wait_max_ns, wait_max_at_ns;
	uint32_t wait_max_holder, wait_max_vcpu;
	uint64_t blocked_ns;           /* sum of wait + service over exits */
	uint64_t holds[5], hold_sum_ns[5], hold_max_ns[5]; /* by enum kd_bql_holder */
	uint64_t log_used, log_dropped;
};
typedef struct kd_bql kd_bql;
KD_API int kd_bql_create(const struct kd_bql_config *cfg, kd_bql **out);
KD_API void kd_bql_destroy(kd_bql *b);
/* Log the waits of exits that found the lock held, and the loop's holds,
 * into log[0..cap) until full. */
KD_API int kd_bql_set_log(kd_bql *b, struct kd_bql_event *log, uint64_t cap);
KD_API int kd_bql_lock(kd_bql *b, uint32_t holder);
/* Release a hold taken by kd_bql_lock. -EPERM (nothing changed) if the lock
 * is not held by a kd_bql_lock holder (free, or an exit holds it): an
 * unmatched unlock would hand the lock to nobody and hang the next lock. */
KD_API int kd_bql_unlock(kd_bql *b);
/* On vCPU vcpu's thread between guest entries: perform the exit if one is
 * due. Returns exits performed (0 or 1) or -EINVAL. */
KD_API int kd_bql_poll(kd_bql *b, uint32_t vcpu);
/* Virtual: a hold [start, end); holds in order, not overlapping (-EINVAL). */
KD_API int kd_bql_hold(kd_bql *b, uint32_t holder, uint64_t start_ns, uint64_t end_ns);
KD_API int kd_bql_model(kd_bql *b, uint64_t t0, uint64_t t1);
KD_API int kd_bql_stats(kd_bql *b, struct kd_bql_stats *out);
/* Wait histogram in the sender's latency buckets (nbuckets == KD_LAT_BUCKETS). */
KD_API int kd_bql_histogram(kd_bql *b, uint64_t *out, uint32_t nbuckets);
/* Real-time workload threads perform b's exits (NULL: none); set any time. */
KD_API int kd_workload_threads_set_bql(kd_workload_threads *t, kd_bql *b);

/*
 * The kernel's side of a migration stall (migrate/collect_stall.c): vCPU 0
 * writes guest_pages pages spread over slot `slot` on its own thread while
 * the calling thread collects the slot every period_ns for duration_ns.
 * hist: guest-entry durations in the latency buckets (KD_LAT_BUCKETS).
 */
enum kd_stall_collector {
	KD_STALL_NONE = 0,  /* the guest alone (baseline) */
	KD_STALL_GET = 1,   /* classic KVM_GET_DIRTY_LOG of the whole slot */
	KD_STALL_CLEAR = 2, /* manual protect: GET copy + CLEAR per chunk_pages chunk */
	KD_STALL_RING = 3,  /* harvest every ring + KVM_RESET_DIRTY_RINGS */
};
#define KD_STALL_MAX_BATCH 256u
#define KD_STALL_RING_CAP 65536u
struct kd_stall_config {
	uint32_t slot;
	uint32_t collector;    /* enum kd_stall_collector */
	uint64_t duration_ns;  /* > 0 */
	uint64_t period_ns;    /* a collection starts every period (0: back to back) */
	uint64_t guest_pages;  /* 1..slot pages, spread evenly over the slot */
	uint32_t batch;        /* stores per guest entry, 1..KD_STALL_MAX_BATCH */
	uint32_t chunk_pages;  /* CLEAR: pages per call, a multiple of 64 */
	uint64_t reserved[2];  /* must be zero */
};
struct kd_stall_result {
	uint64_t guest_pages_written, guest_entries, guest_ns, ring_full_waits;
	uint64_t stall_max_ns, stall_max_at_ns; /* longest guest entry, from the start */
	uint64_t stall_max_cpu_ns; /* longest entry in the guest thread's CPU time */
	uint64_t collects, collect_sum_ns, collect_max_ns; /* passes over the slot */
	uint64_t collect_calls, call_max_ns;               /* ioctls, the longest one */
};
KD_API int kd_collect_stall_run(kd_vm *vm, const struct kd_stall_config *cfg,
				struct kd_stall_result *res, uint64_t *hist, uint32_t nbuckets);

#ifdef __cplusplus
}
#endif
#endif /* KVMDIRTY_MIGRATE_H */
