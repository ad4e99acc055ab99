/*
 * migrate/page_versions.c - verification of the content-free page model
 * (KD_VM_PAGE_VERSIONS): a source slot's version array against the
 * destination's, entry by entry, without reading what neither side ever
 * touched.
 *
 * Both arrays are anonymous private mappings (MAP_NORESERVE) or heap memory:
 * a 4 KiB block of entries that is resident in neither was never written on
 * either side, so both read as zero there and are equal. That holds only
 * while nothing is swapped out (a swapped block is not resident either): with
 * swap in use every entry is read. Skipping is what lets a 24 TiB guest
 * (6 G entries, 48 GiB of versions address space per side) be verified in
 * the time its touched blocks take.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvmdirty.h"

#define BLOCK 4096ull                 /* bytes per page of entries */
#define WINDOW (4096ull * BLOCK)      /* bytes per mincore call */

/* 1 when some swap area is in use (then non-resident does not mean zero). */
static int swap_in_use(void)
{
	FILE *f = fopen("/proc/swaps", "r");
	char line[256];
	int lines = 0;

	if (!f)
		return 1; /* cannot tell: read everything */
	while (fgets(line, sizeof(line), f))
		lines++;
	fclose(f);
	return lines > 1; /* the first line is the header */
}

static uint64_t diff_range(const uint64_t *a, const uint64_t *b, uint64_t from, uint64_t to,
			   uint64_t found, uint64_t *first, uint32_t cap)
{
	for (uint64_t i = from; i < to; i++)
		if (a[i] != b[i]) {
			if (found < cap)
				first[found] = i;
			found++;
		}
	return found;
}

KD_API int64_t kd_versions_diff(const uint64_t *a, const uint64_t *b, uint64_t n,
				uint64_t *first, uint32_t cap)
{
	unsigned char va[WINDOW / BLOCK], vb[WINDOW / BLOCK]; /* 4 KiB each */
	uint64_t found = 0, i = 0;

	if ((!a || !b) && n)
		return -EINVAL;
	if (!first && cap)
		return -EINVAL;
	if (((uintptr_t)a | (uintptr_t)b) & 7)
		return -EINVAL;
	if (n > (UINT64_MAX >> 4))
		return -EINVAL;
	/* unaligned arrays or swap: compare every entry */
	if ((((uintptr_t)a ^ (uintptr_t)b) & (BLOCK - 1)) || swap_in_use())
		return (int64_t)diff_range(a, b, 0, n, 0, first, cap);
	/* the entries before a's first block boundary, read */
	{
		uint64_t head = ((BLOCK - ((uintptr_t)a & (BLOCK - 1))) & (BLOCK - 1)) / 8;
		i = head < n ? head : n;
		found = diff_range(a, b, 0, i, found, first, cap);
	}
	while (i < n) {
		uint64_t left = (n - i) * 8, bytes = left < WINDOW ? left : WINDOW;
		uint64_t blocks = bytes / BLOCK;
		if (!blocks) { /* the tail: less than a block */
			found = diff_range(a, b, i, n, found, first, cap);
			break;
		}
		if (mincore((void *)(a + i), blocks * BLOCK, va) ||
		    mincore((void *)(b + i), blocks * BLOCK, vb)) {
			/* not a mapping mincore knows: read the window */
			found = diff_range(a, b, i, i + blocks * BLOCK / 8, found, first, cap);
		} else {
			for (uint64_t k = 0; k < blocks; k++)
				if ((va[k] | vb[k]) & 1)
					found = diff_range(a, b, i + k * BLOCK / 8,
							   i + (k + 1) * BLOCK / 8, found, first,
							   cap);
		}
		i += blocks * BLOCK / 8;
	}
	return (int64_t)found;
}
