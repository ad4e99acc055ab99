/*
 * real/uffd/uffd_table.c - the tracker's slot table as a data structure:
 * immutable once published and replaced whole (copy on write), so the fault
 * handlers (the sync handler thread, the SIGSEGV handler) look ranges up by
 * address lock-free. Publishing a table and waiting out the readers of the
 * old one is the tracker's job (uffd_backend.c): who the readers are depends
 * on the mode. This file knows tables and ranges only.
 */
#define _GNU_SOURCE
#include "uffd_internal.h"

struct uffd_range *uffd_table_find_addr(const struct utable *t, uintptr_t a)
{
	uint32_t lo = 0, hi = t ? t->n : 0;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct uffd_range *s = t->s[mid];
		if (a < s->start)
			hi = mid;
		else if (a >= s->end)
			lo = mid + 1;
		else
			return t->s[mid];
	}
	return NULL;
}

struct uffd_range *uffd_table_find_id(const struct utable *t, uint32_t id)
{
	for (uint32_t i = 0; t && i < t->n; i++)
		if (t->s[i]->id == id)
			return t->s[i];
	return NULL;
}

/* A copy of old with s added (add) or removed (!add); NULL on ENOMEM. */
struct utable *uffd_table_build(const struct utable *old, struct uffd_range *s, bool add)
{
	uint32_t n = old ? old->n : 0, k = 0;
	struct utable *t = malloc(sizeof *t + (n + 1) * sizeof t->s[0]);

	if (!t)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		if (!add && old->s[i] == s)
			continue;
		if (add && s && old->s[i]->start > s->start) {
			t->s[k++] = s;
			s = NULL;
		}
		t->s[k++] = old->s[i];
	}
	if (add && s)
		t->s[k++] = s;
	t->n = k;
	return t;
}

