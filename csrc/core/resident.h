/*
 * core/resident.h - how much of a mapping is present in memory (mincore):
 * what a lazily backed log has really committed, as opposed to the address
 * space it reserved. Header-only, so that the self-contained logs
 * (emu/hier_log.c, built alone by its C test) use the same count.
 */
#ifndef KD_CORE_RESIDENT_H
#define KD_CORE_RESIDENT_H

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* Bytes a mapping of `bytes` takes: whole pages. */
static inline uint64_t kd_mapped_bytes(uint64_t bytes)
{
	uint64_t psz = (uint64_t)sysconf(_SC_PAGESIZE);

	return (bytes + psz - 1) / psz * psz;
}

/* Bytes of [p, p + bytes) resident now, in whole pages; 0 for NULL. p is
 * page aligned (every log array is an mmap). */
static inline uint64_t kd_resident_bytes(const void *p, uint64_t bytes)
{
	uint64_t psz = (uint64_t)sysconf(_SC_PAGESIZE), pages = (bytes + psz - 1) / psz, total = 0;
	unsigned char vec[4096];

	for (uint64_t i = 0; p && i < pages; i += sizeof(vec)) {
		uint64_t n = pages - i < sizeof(vec) ? pages - i : sizeof(vec);
		if (mincore((char *)p + i * psz, n * psz, vec))
			continue; /* not mapped: nothing resident */
		for (uint64_t q = 0; q < n; q++)
			total += (vec[q] & 1) ? psz : 0;
	}
	return total;
}

#endif
