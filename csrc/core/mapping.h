/*
 * core/mapping.h - the anonymous mappings every log array lives in: how
 * they are reserved (lazily, 2 MiB aligned for transparent huge pages) and
 * how much of one is present in memory (mincore: what a lazily backed log
 * has really committed, as opposed to the address space it reserved).
 * Header-only, so that the self-contained logs (emu/hier_log.c, built alone
 * by its C test) use the same code.
 */
#ifndef KD_CORE_MAPPING_H
#define KD_CORE_MAPPING_H

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define KD_HUGE (2ull << 20)

/*
 * Reserve `bytes` of address space, MAP_NORESERVE: nothing commits until
 * written. From 2 MiB up, 2 MiB aligned with MADV_HUGEPAGE, so that a walk
 * over a large array takes few TLB misses (a touched 2 MiB region may then
 * commit whole). NULL on failure; free with munmap(p, bytes).
 */
static inline void *kd_map_reserve(uint64_t bytes)
{
	uint64_t len = bytes < KD_HUGE ? bytes : bytes + KD_HUGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), *a;

	if (p == MAP_FAILED)
		return NULL;
	if (len == bytes)
		return p;
	a = (char *)(((uintptr_t)p + KD_HUGE - 1) & ~(uintptr_t)(KD_HUGE - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + bytes < p + len)
		munmap(a + bytes, (size_t)(p + len - (a + bytes)));
#ifdef MADV_HUGEPAGE
	madvise(a, bytes, MADV_HUGEPAGE);
#endif
	return a;
}

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
