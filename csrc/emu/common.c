/*
 * emu/common.c - defaults the emulated backends share: their config checks
 * and guest memory.
 */
#include "emu/emu.h"

int kd_emu_slot_memory(kd_vm *vm, struct kd_slot *s)
{
	return vm->cfg.flags & KD_VM_GUEST_MEMORY ? kd_slot_memory_alloc(vm, s) : 0;
}

/* Bitmap backends: write protection or PML; no ring, no uffd modes. */
int kd_emu_check_config(const struct kd_vm_config *c)
{
	if (c->tracking >= KD_TRACK_UFFD_SYNC || c->ring_entries)
		return -EINVAL;
	return 0;
}
