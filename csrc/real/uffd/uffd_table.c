/*
 * real/uffd/uffd_table.c - the tracker's slot table: immutable once
 * published and replaced whole (copy on write), so the fault handlers (the
 * sync handler thread, the SIGSEGV handler) look ranges up by address
 * lock-free: a reader increments a counter, loads the table, uses it,
 * decrements; a writer publishes a new table and waits for the counter to
 * reach zero before freeing the old one (all seq_cst).
 */
#define _GNU_SOURCE
#include <sched.h>

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

/* Wait until no fault handler can still see a table or tracker that was
 * unpublished before this call. */
void uffd_quiesce(struct kd_uffd *u)
{
	if (u->mode == KD_UFFD_MPROTECT) {
		while (uffd_mp_inflight())
			sched_yield();
		return;
	}
	while (__atomic_load_n(&u->readers, __ATOMIC_SEQ_CST))
		sched_yield();
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

/* Replace the table with t; returns once no fault handler can still be
 * reading the old one, which it frees. Caller holds u->lock. */
void uffd_table_publish(struct kd_uffd *u, struct utable *t)
{
	struct utable *old = __atomic_exchange_n(&u->table, t, __ATOMIC_SEQ_CST);

	uffd_quiesce(u);
	free(old);
}

