/*
 * core/counters.c - the user-side cost counters every backend charges
 * (struct kd_stats; vm->user, under vm->lock).
 */
#include "core/internal.h"

void kd_count_reprotect(kd_vm *vm, uint64_t pages, bool o1_capable)
{
	if (!pages)
		return;
	if (o1_capable && (vm->cfg.flags & KD_VM_O1_PROTECT))
		vm->user.protect_bumps++;
	else
		vm->user.pages_reprotected += pages;
	vm->user.tlb_flushes++;
}
