/*
 * core/ring_collect.c - kd_collect on a ring VM, emulated or real: harvest
 * every vCPU's ring into the slots' pending sets (entries of other slots or
 * ranges wait there for their own collect), reset the rings through the
 * backend, then take the asked range from pending.
 */
#include "core/backend.h"

#define HARVEST_CHUNK 256

static int harvest_all(kd_vm *vm, kd_ring_fetch_fn fetch)
{
	struct kd_dirty_gfn buf[HARVEST_CHUNK];
	uint64_t reset = 0;
	int r;

	for (uint32_t i = 0; i < vm->cfg.nvcpus; i++) {
		for (;;) {
			uint64_t n = 0;
			r = fetch(vm, i, buf, HARVEST_CHUNK, &n);
			if (r)
				return r;
			vm->user.ring_harvested += n;
			for (uint64_t k = 0; k < n; k++) {
				struct kd_slot *s = kd_slot_by_id(vm, buf[k].slot);
				if (s && s->pending && buf[k].offset < s->npages)
					kd_pending_or(s, buf[k].offset / 64,
						      1ull << (buf[k].offset % 64));
			}
			if (n < HARVEST_CHUNK)
				break;
		}
	}
	r = vm->ops->ring_reset(vm, &reset);
	if (r)
		return r;
	vm->user.ring_reset += reset;
	return 0;
}

int kd_ring_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
		    uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume,
		    kd_ring_fetch_fn fetch)
{
	int r = harvest_all(vm, fetch);

	if (r)
		return r;
	*count = kd_pending_take(vm, s, first, end, gfns, cap, resume);
	return 0;
}
