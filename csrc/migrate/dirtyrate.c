/*
 * migrate/dirtyrate.c - page sampling for a dirty-rate estimate, as QEMU's
 * calc-dirty-rate does it in page-sampling mode: hash a set of sampled pages
 * of a memory block, hash them again after the measuring period, count the
 * pages whose hash changed. QEMU 7.2 hashes a page with zlib's CRC-32; here
 * it is CRC32C (migrate/crc32c.c): only "changed or not" is used, and a
 * 32-bit CRC of either polynomial misses a change with probability 2^-32.
 */
#include <errno.h>

#include "kvmdirty.h"

#define PAGE KD_PAGE_SIZE

KD_API int kd_sample_page_crc32c(const void *memory, uint64_t npages, const uint64_t *pages,
				 uint64_t n, uint32_t *out)
{
	const uint8_t *m = memory;

	if (!n)
		return 0;
	if (!memory || !pages || !out)
		return -EINVAL;
	for (uint64_t i = 0; i < n; i++)    /* all checked before any is hashed */
		if (pages[i] >= npages)
			return -EINVAL;
	for (uint64_t i = 0; i < n; i++)
		out[i] = kd_crc32c(0, m + pages[i] * PAGE, PAGE);
	return 0;
}
