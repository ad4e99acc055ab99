/*
 * vm/log.c - the user side of the dirty log: KVM_GET_DIRTY_LOG,
 * KVM_CLEAR_DIRTY_LOG, kd_collect and kd_collect_slots. Each checks its arguments here, in
 * KVM's order, kicks the vCPUs (PML) where the backend buffers, and calls
 * the backend.
 */
#include "core/backend.h"

/* Common GET/CLEAR lookup, in KVM's order: ENXIO (no bitmap), EINVAL (slot
 * id; CLEAR's first_page % 64), ENOENT (no slot or no log). */
static int lookup_log(kd_vm *vm, uint32_t slot, bool misaligned, struct kd_slot **out)
{
	if (!vm->ops->has_bitmap)
		return -ENXIO;
	if (misaligned)
		return -EINVAL;
	return kd_slot_find(vm, slot, true, out);
}

static void kick(kd_vm *vm)
{
	if (vm->ops->kick)
		vm->ops->kick(vm);
}

KD_API int kd_get_dirty_log(kd_vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t nwords)
{
	uint64_t size;

	return kd_get_dirty_log_sized(vm, slot, bitmap, nwords, &size);
}

KD_API int kd_get_dirty_log_sized(kd_vm *vm, uint32_t slot, uint64_t *bitmap, uint64_t nwords,
				  uint64_t *size)
{
	struct kd_slot *s = NULL;
	int r;

	if (!vm || !size)
		return -EINVAL;
	kd_vm_lock(vm);
	r = lookup_log(vm, slot, false, &s);
	if (r)
		goto out;
	*size = s->nwords;
	if (!bitmap || nwords < s->nwords) {
		r = -EFAULT; /* the kernel would write past the buffer */
		goto out;
	}
	kick(vm);
	r = vm->ops->get_dirty_log(vm, s, bitmap);
out:
	if (!r)
		vm->user.get_calls++;
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_clear_dirty_log(kd_vm *vm, uint32_t slot, uint64_t first_page,
			      uint32_t num_pages, const uint64_t *bitmap)
{
	struct kd_slot *s = NULL;
	int r;

	if (!vm)
		return -EINVAL;
	kd_vm_lock(vm);
	r = lookup_log(vm, slot, first_page & 63, &s);
	if (r)
		goto out;
	if (first_page > s->npages || num_pages > s->npages - first_page ||
	    (num_pages < s->npages - first_page && (num_pages & 63))) {
		r = -EINVAL;
		goto out;
	}
	if (!bitmap && num_pages) {
		r = -EFAULT;
		goto out;
	}
	if (!vm->ops->clear_dirty_log) {
		r = -EOPNOTSUPP;
		goto out;
	}
	kick(vm);
	r = vm->ops->clear_dirty_log(vm, s, first_page, num_pages, bitmap);
out:
	if (!r)
		vm->user.clear_calls++;
	kd_vm_unlock(vm);
	return r;
}

KD_API int kd_collect(kd_vm *vm, uint32_t slot, uint64_t first_page, uint64_t num_pages,
		      uint64_t *gfns, uint64_t cap, struct kd_collect_result *res)
{
	struct kd_slot *s;
	uint64_t end, n = 0, resume = 0;
	int r = 0;

	if (!vm || !res)
		return -EINVAL;
	kd_vm_lock(vm);
	r = kd_slot_find(vm, slot, true, &s);
	if (r)
		goto out;
	if (first_page > s->npages || num_pages > s->npages - first_page ||
	    (cap < 64 && cap < num_pages)) {
		r = -EINVAL;
		goto out;
	}
	if (!gfns && cap) {
		r = -EFAULT;
		goto out;
	}
	end = first_page + num_pages;
	res->sampled_ns = kd_clock_ns();
	if (!num_pages) {
		resume = end;
		goto done;
	}
	kick(vm);
	r = vm->ops->collect(vm, s, first_page, end, gfns, cap, &n, &resume);
	if (r)
		goto out;
done:
	res->count = n;
	res->resume_page = resume;
	vm->user.collect_calls++;
	vm->user.pages_collected += n;
out:
	kd_vm_unlock(vm);
	return r;
}

/* Check every slot of a kd_collect_slots call before touching any (state
 * unchanged on error); *left = pages to walk from (first_index, first_page). */
static int check_slots(kd_vm *vm, const uint32_t *slots, uint32_t nslots, uint32_t first_index,
		       uint64_t first_page, uint64_t *left)
{
	uint64_t total = 0;

	for (uint32_t i = 0; i < nslots; i++)
		if (kd_slot_id_check(vm, slots[i]))
			return -EINVAL;
	for (uint32_t i = 0; i < nslots; i++) {
		struct kd_slot *s = kd_slot_by_id(vm, slots[i]);

		if (!s || !s->logging)
			return -ENOENT;
		if (i == first_index && first_page > s->npages)
			return -EINVAL;
		if (i >= first_index)
			total += s->npages - (i == first_index ? first_page : 0);
	}
	if (first_index == nslots && first_page)
		return -EINVAL;
	*left = total;
	return 0;
}

KD_API int kd_collect_slots(kd_vm *vm, const uint32_t *slots, uint32_t nslots,
			    uint32_t first_index, uint64_t first_page, uint64_t *gfns,
			    uint64_t cap, struct kd_collect_slots_result *res)
{
	uint64_t n = 0, page = first_page, left = 0;
	uint32_t i = first_index;
	int r;

	if (!vm || !res || first_index > nslots || (!slots && nslots))
		return -EINVAL;
	kd_vm_lock(vm);
	r = check_slots(vm, slots, nslots, first_index, first_page, &left);
	if (r)
		goto out;
	if (cap < 64 && cap < left) {
		r = -EINVAL;
		goto out;
	}
	if (!gfns && cap) {
		r = -EFAULT;
		goto out;
	}
	res->sampled_ns = kd_clock_ns();
	if (left)
		kick(vm);
	for (; i < nslots; i++, page = 0) {
		struct kd_slot *s = kd_slot_by_id(vm, slots[i]);
		uint64_t got = 0, resume = s->npages;

		if (page == s->npages)
			continue;
		if (cap - n < 64 && cap - n < s->npages - page)
			break; /* full: resume at (i, page) */
		r = vm->ops->collect(vm, s, page, s->npages, gfns + n, cap - n, &got, &resume);
		if (r && n) { /* pages already taken are returned, never lost: */
			r = 0;    /* the error comes back on the call resuming here */
			break;
		}
		if (r)
			goto out;
		n += got;
		vm->user.pages_collected += got;
		if (resume < s->npages) {
			page = resume;
			break;
		}
	}
	res->count = n;
	res->resume_index = i;
	res->pad = 0;
	res->resume_page = i < nslots ? page : 0;
	vm->user.collect_calls++;
out:
	kd_vm_unlock(vm);
	return r;
}
