/*
 * real/kvm/kvm_slots.c - memslots on the real kernel: the module's slot
 * tables, KVM_SET_USER_MEMORY_REGION with the host memory of each slot, the
 * internal slot (moved out of the way of user requests: kvm_backend.h), and
 * KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2).
 */
#define _GNU_SOURCE
#include "kvm_internal.h"

#if KD_KVM_NATIVE

/* ---- slot tables (callers hold slots_lock exclusively to change them) ---- */

static struct uslot *slot_by_id(struct kd_kvm *k, uint32_t slot)
{
	uint32_t as = slot >> 16, id = slot & 0xffff;
	return as < 2 ? k->byid[as * MAX_IDS + id] : NULL;
}

/* Index of the first AS-0 slot with gpa > addr. */
uint32_t kvm_as0_upper(struct kd_kvm *k, uint64_t addr)
{
	uint32_t lo = 0, hi = k->nas0;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (k->as0[mid]->gpa <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct uslot *kvm_as0_lookup(struct kd_kvm *k, uint64_t gpa)
{
	uint32_t i = kvm_as0_upper(k, gpa);
	if (!i)
		return NULL;
	struct uslot *s = k->as0[i - 1];
	return gpa - s->gpa < s->size ? s : NULL;
}

static int as0_insert(struct kd_kvm *k, struct uslot *s)
{
	if (k->nas0 == k->cap_as0) {
		uint32_t cap = k->cap_as0 ? k->cap_as0 * 2 : 64;
		struct uslot **a = realloc(k->as0, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		k->as0 = a;
		k->cap_as0 = cap;
	}
	uint32_t i = kvm_as0_upper(k, s->gpa);
	memmove(&k->as0[i + 1], &k->as0[i], (k->nas0 - i) * sizeof(*k->as0));
	k->as0[i] = s;
	k->nas0++;
	return 0;
}

static void as0_remove(struct kd_kvm *k, struct uslot *s)
{
	for (uint32_t i = kvm_as0_upper(k, s->gpa); i-- > 0;) {
		if (k->as0[i] == s) {
			memmove(&k->as0[i], &k->as0[i + 1], (k->nas0 - i - 1) * sizeof(*k->as0));
			k->nas0--;
			return;
		}
	}
}

/* ---- the internal slot ---- */

static int set_region(struct kd_kvm *k, uint32_t slot, uint32_t flags, uint64_t gpa,
		      uint64_t size, void *host)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)host,
	};
	return ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

struct range {
	uint64_t lo, hi; /* [lo, hi), hi saturated */
};

static int cmp_range(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/*
 * Choose an id and a gpa for the internal slot that avoid every user slot of
 * AS 0 and also avoid_id / [avoid_lo, avoid_hi) (the request about to be
 * made). Highest free id; highest 2 MiB-aligned gap below min(addr_limit,
 * 2^47) (the lower half, where the guest's addresses equal physical ones).
 */
int kvm_place_internal(struct kd_kvm *k, int64_t avoid_id, uint64_t avoid_lo,
			  uint64_t avoid_hi, uint32_t *id_out, uint64_t *gpa_out)
{
	int64_t id = USER_SLOTS - 1;
	while (id >= 0 && (k->byid[id] || id == avoid_id))
		id--;
	if (id < 0)
		return -ENOSPC;

	uint32_t n = k->nas0;
	struct range *r = malloc((n + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		r[i] = (struct range){k->as0[i]->gpa, k->as0[i]->gpa + k->as0[i]->size};
	if (avoid_hi > avoid_lo)
		r[n++] = (struct range){avoid_lo, avoid_hi};
	qsort(r, n, sizeof(*r), cmp_range);
	/* Turn hi into a running maximum, so [r[i].hi, r[i+1].lo) is free. */
	for (uint32_t i = 1; i < n; i++)
		if (r[i].hi < r[i - 1].hi)
			r[i].hi = r[i - 1].hi;

	uint64_t top = k->addr_limit < (1ull << 47) ? k->addr_limit : (1ull << 47);
	uint64_t hi = top;
	int rc = -ENOSPC;
	for (int64_t i = (int64_t)n - 1; i >= -1; i--) {
		uint64_t lo = i >= 0 ? r[i].hi : 0;
		if (i + 1 < (int64_t)n && r[i + 1].lo < hi)
			hi = r[i + 1].lo;
		if (hi >= k->isize) {
			uint64_t cand = (hi - k->isize) & ~(TWO_MB - 1);
			if (cand >= lo && lo <= hi) {
				*gpa_out = cand;
				rc = 0;
				break;
			}
		}
	}
	free(r);
	if (!rc)
		*id_out = (uint32_t)id;
	return rc;
}

/*
 * Re-register the internal slot at id/gpa with fresh page tables (also used
 * in place, to recycle the page-table pool). No vCPU runs (slots_lock held
 * exclusively). Deleting the old slot makes KVM drop every shadow page built
 * from the old tables, so rewriting them is safe. On failure the old slot is
 * restored if possible.
 */
int kvm_relocate(struct kd_kvm *k, uint32_t id, uint64_t gpa)
{
	int r;
	if (k->ivalid) {
		r = set_region(k, k->iid, 0, k->igpa, 0, NULL);
		if (r)
			return r;
		k->ivalid = false;
	}
	r = set_region(k, id, 0, gpa, k->isize - PAGE, k->ihost);
	if (r) {
		if (!set_region(k, k->iid, 0, k->igpa, k->isize - PAGE, k->ihost))
			k->ivalid = true;
		/* else: writes report -EIO until a later move succeeds */
		return r;
	}
	k->ivalid = true;
	k->iid = id;
	k->igpa = gpa;
	kd_kg_pt_reset(&k->pt, k->ihost, gpa, k->addr_limit, k->gbpages);
	k->nalias = 0;
	for (uint64_t a = gpa & ~((1ull << 30) - 1); a < gpa + k->isize; a += 1ull << 30) {
		r = kd_kg_pt_map(&k->pt, a, a);
		if (r)
			return r; /* cannot happen: the pool starts empty */
	}
	kd_kg_write_gdt(k->ihost, gpa);
	k->gen++;
	k->moves++;
	return 0;
}

/* ---- memslots ---- */

/*
 * The kernel's "general sanity checks" of a memslot request, all EINVAL.
 * Used only to pick the errno when mmap fails for a new slot: if the kernel
 * would refuse anyway, report its EINVAL, else the mmap failure.
 */
static bool kernel_would_refuse(struct kd_kvm *k, uint32_t slot, uint32_t flags, uint64_t gpa,
				uint64_t size)
{
	return (flags & ~KNOWN_FLAGS) || (size & (PAGE - 1)) || (gpa & (PAGE - 1)) ||
	       (slot >> 16) >= k->as_num || (slot & 0xffff) >= USER_SLOTS || gpa + size < gpa ||
	       (size >> 12) > MAX_NR_PAGES;
}

int kd_kvm_set_user_memory_region(struct kd_kvm *k, uint32_t slot, uint32_t flags, uint64_t gpa,
				  uint64_t size)
{
	if (!k)
		return -EINVAL;
	pthread_rwlock_wrlock(&k->slots_lock);
	uint32_t as = slot >> 16, id = slot & 0xffff;
	int r = 0;

	/* Move the internal slot out of the way of this request first. */
	uint64_t end = gpa + size < gpa ? UINT64_MAX : gpa + size;
	bool clash = as == 0 && (id == k->iid || (size && gpa < k->igpa + k->isize && end > k->igpa));
	if (clash) {
		uint32_t nid;
		uint64_t ngpa;
		r = kvm_place_internal(k, as == 0 ? (int64_t)id : -1, size ? gpa : 0, size ? end : 0,
				   &nid, &ngpa);
		if (!r)
			r = kvm_relocate(k, nid, ngpa);
		if (r)
			goto out;
	}

	struct uslot *old = slot_by_id(k, slot);
	void *host = NULL, *fresh = NULL;
	if (old) {
		host = old->host; /* flags change or move keep the memory */
	} else if (size && !(size & (PAGE - 1)) && (size >> 12) <= MAX_NR_PAGES) {
		fresh = mmap(NULL, size, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (fresh == MAP_FAILED) {
			r = kernel_would_refuse(k, slot, flags, gpa, size) ? -EINVAL : -errno;
			goto out;
		}
		host = fresh;
	}
	/* else: size 0 or a size the kernel refuses before looking at memory */

	r = set_region(k, slot, flags, gpa, size, host);
	if (r) {
		if (fresh)
			munmap(fresh, size);
		goto out;
	}

	if (!size) { /* deleted (the kernel refuses to delete a missing slot) */
		if (old) {
			if (as == 0)
				as0_remove(k, old);
			k->byid[as * MAX_IDS + id] = NULL;
			munmap(old->host, old->size);
			free(old);
		}
	} else if (old) {
		old->flags = flags;
		if (gpa != old->gpa && as == 0) { /* KVM_MR_MOVE */
			as0_remove(k, old);
			old->gpa = gpa;
			as0_insert(k, old); /* cannot fail: capacity is there */
		}
		old->gpa = gpa;
	} else {
		/* as < 2 here: the kernel has no other address spaces. */
		struct uslot *s = calloc(1, sizeof(*s));
		if (s)
			*s = (struct uslot){slot, flags, gpa, size, host};
		if (!s || as >= 2 || (as == 0 && as0_insert(k, s) < 0)) {
			/* Undo: out of memory for our own bookkeeping. */
			free(s);
			set_region(k, slot, 0, gpa, 0, NULL);
			munmap(fresh, size);
			r = -ENOMEM;
			goto out;
		}
		k->byid[as * MAX_IDS + id] = s;
	}

	/* Recycle the page-table pool when it is half used, and drop the
	 * aliases when a slot now covers one (no vCPU runs now). */
	bool rebuild = k->pt.used > KD_KG_PT_PAGES / 2;
	for (uint32_t i = 0; size && as == 0 && i < k->nalias && !rebuild; i++)
		rebuild = gpa < (k->alias[i].vregion + 1) << 30 && end > k->alias[i].vregion << 30;
	if (rebuild)
		kvm_relocate(k, k->iid, k->igpa);
out:
	pthread_rwlock_unlock(&k->slots_lock);
	return r;
}

int kd_kvm_slot_memory(struct kd_kvm *k, uint32_t slot, void **host, uint64_t *size)
{
	if (!k || !host || !size)
		return -EINVAL;
	pthread_rwlock_rdlock(&k->slots_lock);
	struct uslot *s = slot_by_id(k, slot);
	if (s) {
		*host = s->host;
		*size = s->size;
	}
	pthread_rwlock_unlock(&k->slots_lock);
	return s ? 0 : -ENOENT;
}

int kd_kvm_enable_manual_protect(struct kd_kvm *k, uint64_t flags)
{
	if (!k)
		return -EINVAL;
	struct kvm_enable_cap ec = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2};
	ec.args[0] = flags;
	return ioctl(k->vm_fd, KVM_ENABLE_CAP, &ec) < 0 ? -errno : 0;
}

#endif /* KD_KVM_NATIVE */
