/*
 * migrate/wire_dest.h - what the destination's decoder (wire_dest.c) and its
 * prefault thread (prefault.c) share; internal, not installed.
 */
#ifndef KD_WIRE_DEST_H
#define KD_WIRE_DEST_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "kvmdirty.h"

/* One destination region, mapped when MEM_SIZE arrives. */
struct kd_dest_region {
	uint64_t gpa, size;
	uint8_t *mem;
	uint64_t *written; /* bit per page: written since mapped (else still zero) */
};

#define KD_PREFAULT_STEP (2ull << 20)
#define KD_PREFAULT_NO_HINT UINT64_MAX

/* The prefault thread's state. The layout (r, prefix, nregions, total) is
 * fixed before the thread starts and read-only afterwards; hint and stop
 * change under lock; bytes is atomic. */
struct kd_prefault {
	uint64_t ahead; /* bytes to populate past the writer; 0 = off */
	const struct kd_dest_region *r;
	const uint64_t *prefix; /* linear offset of each region (address order) */
	uint32_t nregions;
	uint64_t total;
	pthread_t thread;
	int running;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t hint; /* linear end of the last dense batch, or NO_HINT */
	int stop;
	uint64_t bytes; /* bytes prefaulted (atomic) */
};

void kd_prefault_init(struct kd_prefault *pf);
/* Stop the thread (if any) and free what init made. */
void kd_prefault_destroy(struct kd_prefault *pf);
/* Start the thread on the destination's layout (if ahead != 0). */
void kd_prefault_start(struct kd_prefault *pf, const struct kd_dest_region *r,
		       const uint64_t *prefix, uint32_t nregions, uint64_t total);
/* After a batch: if its page records [first, end) (linear) were dense and
 * ascending, tell the thread where the writer is. */
void kd_prefault_hint(struct kd_prefault *pf, uint64_t first, uint64_t end,
		      uint64_t npages);
/* Stop and join the thread (end of stream). */
void kd_prefault_finish(struct kd_prefault *pf);

#endif /* KD_WIRE_DEST_H */
