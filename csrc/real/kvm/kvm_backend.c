/*
 * kvm_backend.c - the real /dev/kvm backend: a KVM VM with user memslots on
 * anonymous host memory, the dirty bitmap (classic and manual protect), the
 * per-vCPU dirty ring, and kd_kvm_write, which runs the guest program of
 * kvm_guest.c to store into listed pages. See kvm_backend.h for the API and
 * the internal-memslot rules.
 *
 * On anything but Linux x86-64 every entry point reports -ENODEV.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvm_backend.h"

#if defined(__linux__) && defined(__x86_64__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* Values from Documentation/virt/kvm/api.rst, in case <linux/kvm.h> is old. */
#ifndef KVM_CAP_DIRTY_LOG_RING
#define KVM_CAP_DIRTY_LOG_RING 192
#endif
#ifndef KVM_CAP_DIRTY_LOG_RING_ACQ_REL
#define KVM_CAP_DIRTY_LOG_RING_ACQ_REL 223
#endif
#ifndef KVM_EXIT_DIRTY_RING_FULL
#define KVM_EXIT_DIRTY_RING_FULL 31
#endif
#ifndef KVM_DIRTY_LOG_PAGE_OFFSET
#define KVM_DIRTY_LOG_PAGE_OFFSET 64 /* x86: arch/x86/include/uapi/asm/kvm.h */
#endif

_Static_assert(sizeof(struct kd_dirty_gfn) == sizeof(struct kvm_dirty_gfn),
	       "kd_dirty_gfn must have KVM's layout");

#define PAGE 4096ull
#define TWO_MB (2ull << 20)
#define MAX_IDS 32768u          /* slot ids are 16 bits */
#define USER_SLOTS 32764u       /* KVM_USER_MEM_SLOTS on x86 */
#define MAX_NR_PAGES 0x7fffffffull /* KVM_MEM_MAX_NR_PAGES */
#define KNOWN_FLAGS (KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)

/* A user memslot. host/size never change while it exists. */
struct uslot {
	uint32_t slot; /* as_id << 16 | id */
	uint32_t flags;
	uint64_t gpa;
	uint64_t size;
	void *host;
};

struct vcpu {
	int fd;
	struct kvm_run *run;
	struct kd_dirty_gfn *ring; /* mmap'd from fd, ring_entries entries */
	uint32_t fetch;            /* next ring entry to harvest (ring_lock) */
	pthread_mutex_t ring_lock;
	int busy;                  /* a thread is in kd_kvm_write (atomic) */
	uint32_t gen;              /* layout generation its sregs reflect */
};

struct kd_kvm {
	int sys_fd, vm_fd;
	uint32_t nvcpus, ring_entries, as_num;
	size_t run_size;
	struct vcpu *v;
	struct kvm_cpuid2 *cpuid;

	/*
	 * slots_lock: writes hold it shared, memslot calls exclusive; so the
	 * slot tables, the internal slot's place and a present page-table
	 * entry never change while the guest runs.
	 */
	pthread_rwlock_t slots_lock;
	struct uslot **byid;  /* [as_id * MAX_IDS + id], as_id < 2 */
	struct uslot **as0;   /* address-space-0 slots sorted by gpa */
	uint32_t nas0, cap_as0;

	/* The internal slot: never overlaps a user slot of AS 0, never shares
	 * its id. ihost/isize fixed for the VM's life. */
	uint8_t *ihost;
	uint64_t isize, igpa;
	uint32_t iid;
	bool ivalid;   /* currently registered with KVM */
	uint32_t gen;  /* bumped whenever it moves (vCPUs reload sregs) */
	uint32_t moves;
	pthread_mutex_t pt_lock; /* serialises kd_kg_pt_map and the alias table */
	struct kd_kg_pt pt;
	/* Aliases of 1 GiB regions at or above 2^47 (see kvm_backend.h), sorted
	 * by gregion; under pt_lock; emptied by relocate. Invariant: no AS-0
	 * user slot overlaps an alias's virtual region. */
	struct alias {
		uint64_t gregion, vregion; /* gpa >> 30, va >> 30 */
	} *alias;
	uint32_t nalias, cap_alias;
	uint64_t addr_limit; /* guest reaches [0, addr_limit) */
	uint32_t maxphy;
	bool gbpages;
};

/* ---- availability ---- */

static pthread_once_t why_once = PTHREAD_ONCE_INIT;
static const char *why_ptr;
static char why_buf[160];

static void why_probe(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why_buf, sizeof(why_buf), "/dev/kvm: %s", strerror(errno));
		why_ptr = why_buf;
		return;
	}
	int api = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		snprintf(why_buf, sizeof(why_buf), "/dev/kvm: KVM API version %d, need %d", api,
			 KVM_API_VERSION);
		why_ptr = why_buf;
		close(fd);
		return;
	}
	int vm;
	do
		vm = ioctl(fd, KVM_CREATE_VM, 0);
	while (vm < 0 && errno == EINTR);
	if (vm < 0) {
		snprintf(why_buf, sizeof(why_buf), "/dev/kvm: KVM_CREATE_VM failed: %s",
			 strerror(errno));
		why_ptr = why_buf;
	} else {
		close(vm);
	}
	close(fd);
}

const char *kd_kvm_unavailable_reason(void)
{
	pthread_once(&why_once, why_probe);
	return why_ptr;
}

/* ---- slot tables (callers hold slots_lock exclusively to change them) ---- */

static struct uslot *slot_by_id(struct kd_kvm *k, uint32_t slot)
{
	uint32_t as = slot >> 16, id = slot & 0xffff;
	return as < 2 ? k->byid[as * MAX_IDS + id] : NULL;
}

/* Index of the first AS-0 slot with gpa > addr. */
static uint32_t as0_upper(struct kd_kvm *k, uint64_t addr)
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

static struct uslot *as0_lookup(struct kd_kvm *k, uint64_t gpa)
{
	uint32_t i = as0_upper(k, gpa);
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
	uint32_t i = as0_upper(k, s->gpa);
	memmove(&k->as0[i + 1], &k->as0[i], (k->nas0 - i) * sizeof(*k->as0));
	k->as0[i] = s;
	k->nas0++;
	return 0;
}

static void as0_remove(struct kd_kvm *k, struct uslot *s)
{
	for (uint32_t i = as0_upper(k, s->gpa); i-- > 0;) {
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
static int place_internal(struct kd_kvm *k, int64_t avoid_id, uint64_t avoid_lo,
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
static int relocate(struct kd_kvm *k, uint32_t id, uint64_t gpa)
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

/* ---- open / close ---- */

static int get_cpuid(struct kd_kvm *k)
{
	for (uint32_t nent = 128; nent <= 4096; nent *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
		if (!c)
			return -ENOMEM;
		c->nent = nent;
		if (ioctl(k->sys_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			k->cpuid = c;
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG)
			return -e;
	}
	return -E2BIG;
}

static const struct kvm_cpuid_entry2 *cpuid_leaf(struct kd_kvm *k, uint32_t fn)
{
	for (uint32_t i = 0; i < k->cpuid->nent; i++)
		if (k->cpuid->entries[i].function == fn && k->cpuid->entries[i].index == 0)
			return &k->cpuid->entries[i];
	return NULL;
}

void kd_kvm_close(struct kd_kvm *k)
{
	if (!k)
		return;
	if (k->v) {
		for (uint32_t i = 0; i < k->nvcpus; i++) {
			struct vcpu *v = &k->v[i];
			if (v->ring)
				munmap(v->ring, (size_t)k->ring_entries * sizeof(struct kd_dirty_gfn));
			if (v->run)
				munmap(v->run, k->run_size);
			if (v->fd >= 0)
				close(v->fd);
			pthread_mutex_destroy(&v->ring_lock);
		}
		free(k->v);
	}
	if (k->vm_fd >= 0)
		close(k->vm_fd); /* the kernel drops the memslots with the VM */
	if (k->sys_fd >= 0)
		close(k->sys_fd);
	if (k->byid) {
		for (uint32_t i = 0; i < 2 * MAX_IDS; i++) {
			if (k->byid[i]) {
				munmap(k->byid[i]->host, k->byid[i]->size);
				free(k->byid[i]);
			}
		}
		free(k->byid);
	}
	free(k->as0);
	free(k->alias);
	if (k->ihost)
		munmap(k->ihost, k->isize);
	free(k->cpuid);
	pthread_rwlock_destroy(&k->slots_lock);
	pthread_mutex_destroy(&k->pt_lock);
	free(k);
}

static int vcpu_init(struct kd_kvm *k, uint32_t i)
{
	struct vcpu *v = &k->v[i];
	v->fd = ioctl(k->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
	if (v->fd < 0)
		return -errno;
	void *p = mmap(NULL, k->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	v->run = p;
	if (k->ring_entries) {
		p = mmap(NULL, (size_t)k->ring_entries * sizeof(struct kd_dirty_gfn),
			 PROT_READ | PROT_WRITE, MAP_SHARED, v->fd,
			 (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * (off_t)getpagesize());
		if (p == MAP_FAILED)
			return -errno;
		v->ring = p;
	}
	/* Without this the vCPU assumes 36 physical address bits. */
	if (ioctl(v->fd, KVM_SET_CPUID2, k->cpuid) < 0)
		return -errno;
	struct kvm_sregs s;
	if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
		return -errno;
	kd_kg_sregs(&s, k->igpa);
	if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
		return -errno;
	v->gen = k->gen;
	return 0;
}

int kd_kvm_open(uint32_t nvcpus, uint32_t ring_entries, struct kd_kvm **out)
{
	if (!out || nvcpus == 0 || nvcpus > KD_MAX_VCPUS)
		return -EINVAL;
	*out = NULL;
	struct kd_kvm *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->sys_fd = k->vm_fd = -1;
	pthread_rwlock_init(&k->slots_lock, NULL);
	pthread_mutex_init(&k->pt_lock, NULL);
	int r;

	k->sys_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (k->sys_fd < 0) {
		r = -errno;
		goto fail;
	}
	if (ioctl(k->sys_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		r = -ENODEV;
		goto fail;
	}
	do
		k->vm_fd = ioctl(k->sys_fd, KVM_CREATE_VM, 0);
	while (k->vm_fd < 0 && errno == EINTR);
	if (k->vm_fd < 0) {
		r = -errno;
		goto fail;
	}
	int sz = ioctl(k->sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz <= 0) {
		r = sz < 0 ? -errno : -ENODEV;
		goto fail;
	}
	k->run_size = (size_t)sz;
	r = get_cpuid(k);
	if (r)
		goto fail;
	const struct kvm_cpuid_entry2 *e = cpuid_leaf(k, 0x80000008);
	k->maxphy = e ? (e->eax & 0xff) : 36;
	e = cpuid_leaf(k, 0x80000001);
	k->gbpages = e && (e->edx & (1u << 26)); /* pdpe1gb */
	k->addr_limit = 1ull << (k->maxphy < 48 ? k->maxphy : 48);
	int nas = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MULTI_ADDRESS_SPACE);
	k->as_num = nas > 0 ? (uint32_t)nas : 1;

	/* The ring must be enabled before any vCPU exists. KVM takes its size
	 * in bytes as a u32 and would silently build a smaller ring (or none)
	 * from a size of 4 GiB or more: refuse those as too big, as it does
	 * every size above 1 MiB it can see. */
	if ((uint64_t)ring_entries * sizeof(struct kd_dirty_gfn) > UINT32_MAX) {
		r = ring_entries & (ring_entries - 1) ? -EINVAL : -E2BIG; /* its order */
		goto fail;
	}
	if (ring_entries) {
		int cap = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0
				  ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
				  : KVM_CAP_DIRTY_LOG_RING;
		struct kvm_enable_cap ec = {.cap = (uint32_t)cap};
		ec.args[0] = (uint64_t)ring_entries * sizeof(struct kd_dirty_gfn);
		if (ioctl(k->vm_fd, KVM_ENABLE_CAP, &ec) < 0) {
			r = -errno;
			goto fail;
		}
		k->ring_entries = ring_entries;
	}

	k->byid = calloc(2 * MAX_IDS, sizeof(*k->byid));
	if (!k->byid) {
		r = -ENOMEM;
		goto fail;
	}
	/* + one page at the end: the exit page, reserved but never registered */
	k->isize = (KD_KG_CMD_OFF + (uint64_t)nvcpus * KD_KG_CMD_BYTES + PAGE + TWO_MB - 1) &
		   ~(TWO_MB - 1);
	void *p = mmap(NULL, k->isize, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		k->isize = 0;
		r = -errno;
		goto fail;
	}
	k->ihost = p;
	memcpy(k->ihost + KD_KG_CODE_OFF, kd_kg_code, kd_kg_code_len);
	uint32_t id;
	uint64_t gpa;
	r = place_internal(k, -1, 0, 0, &id, &gpa);
	if (!r)
		r = relocate(k, id, gpa);
	if (r)
		goto fail;

	k->v = calloc(nvcpus, sizeof(*k->v));
	if (!k->v) {
		r = -ENOMEM;
		goto fail;
	}
	k->nvcpus = nvcpus;
	for (uint32_t i = 0; i < nvcpus; i++) {
		k->v[i].fd = -1;
		pthread_mutex_init(&k->v[i].ring_lock, NULL);
	}
	for (uint32_t i = 0; i < nvcpus; i++) {
		r = vcpu_init(k, i);
		if (r)
			goto fail;
	}
	*out = k;
	return 0;
fail:
	kd_kvm_close(k);
	return r;
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
		r = place_internal(k, as == 0 ? (int64_t)id : -1, size ? gpa : 0, size ? end : 0,
				   &nid, &ngpa);
		if (!r)
			r = relocate(k, nid, ngpa);
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
		relocate(k, k->iid, k->igpa);
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

/* ---- the guest writes ---- */

/* Index of the first alias with gregion >= g. Caller holds pt_lock. */
static uint32_t alias_find(struct kd_kvm *k, uint64_t g)
{
	uint32_t lo = 0, hi = k->nalias;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (k->alias[mid].gregion < g)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * Map the 1 GiB region of gpa (>= 2^47) at a lower-half alias: the highest
 * 1 GiB virtual region not mapped yet and not covered by any AS-0 user slot.
 * Caller holds slots_lock shared and pt_lock.
 */
static int alias_map(struct kd_kvm *k, uint64_t gpa)
{
	uint64_t g = gpa >> 30;
	uint32_t i = alias_find(k, g);
	if (i < k->nalias && k->alias[i].gregion == g)
		return 0;
	if (k->nalias == k->cap_alias) {
		uint32_t cap = k->cap_alias ? 2 * k->cap_alias : 64;
		struct alias *a = realloc(k->alias, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		k->alias = a;
		k->cap_alias = cap;
	}
	for (uint64_t v = (KD_KG_VA_LIMIT >> 30); v-- > 0;) {
		uint64_t lo = v << 30, hi = lo + (1ull << 30);
		if (kd_kg_pt_mapped(&k->pt, lo))
			continue;
		uint32_t j = as0_upper(k, hi - 1); /* slots starting below hi */
		if (j && k->as0[j - 1]->gpa + k->as0[j - 1]->size > lo)
			continue;
		int r = kd_kg_pt_map(&k->pt, lo, gpa);
		if (r)
			return r;
		memmove(&k->alias[i + 1], &k->alias[i], (k->nalias - i) * sizeof(*k->alias));
		k->alias[i] = (struct alias){g, v};
		k->nalias++;
		return 0;
	}
	return -ENOMEM;
}

/* Guest virtual address of gpa (mapped). Caller holds slots_lock shared. */
static uint64_t gpa_va(struct kd_kvm *k, uint64_t gpa)
{
	if (gpa < KD_KG_VA_LIMIT)
		return gpa;
	pthread_mutex_lock(&k->pt_lock);
	uint32_t i = alias_find(k, gpa >> 30);
	uint64_t va = (k->alias[i].vregion << 30) | (gpa & ((1ull << 30) - 1));
	pthread_mutex_unlock(&k->pt_lock);
	return va;
}

/*
 * Every gfn in a writable AS-0 user slot the guest can reach, and mapped by
 * the guest's page tables. Caller holds slots_lock shared.
 */
static int check_gfns(struct kd_kvm *k, const uint64_t *gfns, uint64_t n)
{
	struct uslot *last = NULL;
	int rc = 0;
	for (uint64_t i = 0; i < n; i++) {
		if (gfns[i] >> 52)
			return -EFAULT;
		uint64_t gpa = gfns[i] << 12;
		if (!last || gpa - last->gpa >= last->size) {
			last = as0_lookup(k, gpa);
			if (!last || (last->flags & KVM_MEM_READONLY))
				return -EFAULT;
		}
		if (gpa >= k->addr_limit) {
			rc = -ERANGE; /* keep looking: -EFAULT takes precedence */
		} else if (!rc && gpa < KD_KG_VA_LIMIT && !kd_kg_pt_mapped(&k->pt, gpa)) {
			pthread_mutex_lock(&k->pt_lock);
			rc = kd_kg_pt_map(&k->pt, gpa, gpa);
			pthread_mutex_unlock(&k->pt_lock);
		} else if (!rc && gpa >= KD_KG_VA_LIMIT) {
			pthread_mutex_lock(&k->pt_lock);
			rc = alias_map(k, gpa);
			pthread_mutex_unlock(&k->pt_lock);
		}
	}
	return rc;
}

static int run_once(struct vcpu *v)
{
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) == 0)
			return 0;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
		/* a signal: re-enter; guest state is kept */
	}
}

int kd_kvm_write(struct kd_kvm *k, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		 uint64_t value, uint64_t *applied, uint32_t *exit_reason)
{
	if (!k || !applied || !exit_reason || (n && !gfns))
		return -EINVAL;
	*applied = 0;
	*exit_reason = KD_EXIT_NONE;
	if (vcpu >= k->nvcpus)
		return -EINVAL;
	struct vcpu *v = &k->v[vcpu];
	if (__atomic_exchange_n(&v->busy, 1, __ATOMIC_ACQUIRE))
		return -EBUSY;
	pthread_rwlock_rdlock(&k->slots_lock);

	uint64_t done = 0;
	int r = k->ivalid ? check_gfns(k, gfns, n) : -EIO;
	struct kd_kg_cmd *cmd =
		(struct kd_kg_cmd *)(k->ihost + KD_KG_CMD_OFF + (uint64_t)vcpu * KD_KG_CMD_BYTES);
	uint64_t cmd_gpa = k->igpa + KD_KG_CMD_OFF + (uint64_t)vcpu * KD_KG_CMD_BYTES;
	uint64_t code_va = k->igpa + KD_KG_CODE_OFF; /* identity mapped */

	if (!r && v->gen != k->gen) { /* the internal slot moved: new CR3, GDT, TR */
		struct kvm_sregs s;
		if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
			r = -errno;
		} else {
			kd_kg_sregs(&s, k->igpa);
			if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
				r = -errno;
			else
				v->gen = k->gen;
		}
	}

	while (!r && done < n) {
		uint64_t m = n - done < KD_KG_CMD_MAX ? n - done : KD_KG_CMD_MAX;
		cmd->value = value;
		cmd->n = m;
		cmd->index = 0;
		cmd->exit_addr = k->igpa + k->isize - PAGE;
		for (uint64_t j = 0; j < m; j++)
			cmd->list[j] = gpa_va(k, gfns[done + j] << 12);
		struct kvm_regs regs;
		kd_kg_regs(&regs, k->igpa, cmd_gpa);
		if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0) {
			r = -errno;
			break;
		}
		r = run_once(v);
		if (r) {
			done += cmd->index;
			break;
		}
		struct kvm_run *run = v->run;
		if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write &&
		    run->mmio.phys_addr == k->igpa + k->isize - PAGE && cmd->index == m) {
			done += m;
			continue;
		}
		if (run->exit_reason != KVM_EXIT_DIRTY_RING_FULL) {
			done += cmd->index;
			r = -EIO;
			break;
		}
		/*
		 * Ring full. The kernel pushed the entry during a write fault
		 * and exits before re-entering the guest, so RIP is normally at
		 * the store (not done) of index rdx; or at start if the ring was
		 * already full. Work out exactly how many stores completed.
		 */
		if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0) {
			r = -errno;
			done += cmd->index;
			break;
		}
		uint64_t idx = cmd->index, off = regs.rip - code_va;
		if (off == KD_KG_RIP_STORE && regs.rdx == idx && idx < m) {
			/* Complete the faulting store; its page is in the ring. */
			uint64_t gpa = gfns[done + idx] << 12;
			struct uslot *s = as0_lookup(k, gpa);
			__atomic_store_n((uint64_t *)((uint8_t *)s->host + (gpa - s->gpa)), value,
					 __ATOMIC_RELAXED);
			idx++;
		} else if (off == KD_KG_RIP_INC && regs.rdx == idx && idx < m) {
			idx++; /* stored, not yet published */
		}
		done += idx;
		*exit_reason = KD_EXIT_DIRTY_RING_FULL;
		break;
	}

	/* After a failed run (e.g. a triple fault) reload the whole CPU state. */
	if (r)
		v->gen = k->gen - 1;
	*applied = done;
	pthread_rwlock_unlock(&k->slots_lock);
	__atomic_store_n(&v->busy, 0, __ATOMIC_RELEASE);
	return r;
}

/* ---- dirty bitmap ---- */

int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t *bitmap)
{
	if (!k)
		return -EINVAL;
	struct kvm_dirty_log d = {.slot = slot, .dirty_bitmap = bitmap};
	return ioctl(k->vm_fd, KVM_GET_DIRTY_LOG, &d) < 0 ? -errno : 0;
}

int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t first_page,
			   uint32_t num_pages, const uint64_t *bitmap)
{
	if (!k)
		return -EINVAL;
	struct kvm_clear_dirty_log c = {
		.slot = slot,
		.num_pages = num_pages,
		.first_page = first_page,
		.dirty_bitmap = (void *)(uintptr_t)bitmap,
	};
	return ioctl(k->vm_fd, KVM_CLEAR_DIRTY_LOG, &c) < 0 ? -errno : 0;
}

/* ---- dirty ring ---- */

int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			uint64_t *count)
{
	if (!k || !count || (!out && cap) || !k->ring_entries || vcpu >= k->nvcpus)
		return -EINVAL;
	struct vcpu *v = &k->v[vcpu];
	uint64_t c = 0;
	pthread_mutex_lock(&v->ring_lock);
	while (c < cap) {
		struct kd_dirty_gfn *e = &v->ring[v->fetch & (k->ring_entries - 1)];
		/* Acquire pairs with the kernel's flags store after slot/offset. */
		if (__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) != KD_DIRTY_GFN_F_DIRTY)
			break;
		out[c].flags = KD_DIRTY_GFN_F_DIRTY;
		out[c].slot = e->slot;
		out[c].offset = e->offset;
		/* Release: our reads of the entry happen before the kernel reuses it. */
		__atomic_store_n(&e->flags, KD_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		v->fetch++;
		c++;
	}
	pthread_mutex_unlock(&v->ring_lock);
	*count = c;
	return 0;
}

int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn **entries,
			uint32_t *nentries)
{
	if (!k || !entries || !nentries || !k->ring_entries || vcpu >= k->nvcpus)
		return -EINVAL;
	*entries = k->v[vcpu].ring;
	*nentries = k->ring_entries;
	return 0;
}

int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *count)
{
	if (!k || !count)
		return -EINVAL;
	int r = ioctl(k->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
	if (r < 0)
		return -errno;
	*count = (uint64_t)r;
	return 0;
}

int kd_kvm_internal_info(struct kd_kvm *k, struct kd_kvm_internal_info *out)
{
	if (!k || !out)
		return -EINVAL;
	pthread_rwlock_rdlock(&k->slots_lock);
	*out = (struct kd_kvm_internal_info){
		.slot = k->iid,
		.moves = k->moves,
		.gpa = k->igpa,
		.size = k->isize,
		.addr_limit = k->addr_limit,
		.maxphyaddr = k->maxphy,
		.gbpages = k->gbpages,
		.pt_pages_used = k->pt.used,
		.pt_pages_cap = KD_KG_PT_PAGES,
	};
	pthread_rwlock_unlock(&k->slots_lock);
	return 0;
}

uint32_t kd_kvm_address_spaces(const struct kd_kvm *k)
{
	return k->as_num;
}

#else /* not Linux x86-64 */

uint32_t kd_kvm_address_spaces(const struct kd_kvm *k)
{
	(void)k;
	return 1;
}

const char *kd_kvm_unavailable_reason(void)
{
	return "kvm backend: needs Linux on x86-64";
}
int kd_kvm_open(uint32_t nvcpus, uint32_t ring_entries, struct kd_kvm **out)
{
	(void)nvcpus;
	(void)ring_entries;
	if (out)
		*out = NULL;
	return -ENODEV;
}
void kd_kvm_close(struct kd_kvm *k) { (void)k; }
int kd_kvm_set_user_memory_region(struct kd_kvm *k, uint32_t slot, uint32_t flags, uint64_t gpa,
				  uint64_t size)
{
	(void)k; (void)slot; (void)flags; (void)gpa; (void)size;
	return -ENODEV;
}
int kd_kvm_slot_memory(struct kd_kvm *k, uint32_t slot, void **host, uint64_t *size)
{
	(void)k; (void)slot; (void)host; (void)size;
	return -ENODEV;
}
int kd_kvm_enable_manual_protect(struct kd_kvm *k, uint64_t flags)
{
	(void)k; (void)flags;
	return -ENODEV;
}
int kd_kvm_write(struct kd_kvm *k, uint32_t vcpu, const uint64_t *gfns, uint64_t n,
		 uint64_t value, uint64_t *applied, uint32_t *exit_reason)
{
	(void)k; (void)vcpu; (void)gfns; (void)n; (void)value; (void)applied; (void)exit_reason;
	return -ENODEV;
}
int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t *bitmap)
{
	(void)k; (void)slot; (void)bitmap;
	return -ENODEV;
}
int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t slot, uint64_t first_page,
			   uint32_t num_pages, const uint64_t *bitmap)
{
	(void)k; (void)slot; (void)first_page; (void)num_pages; (void)bitmap;
	return -ENODEV;
}
int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn *out, uint64_t cap,
			uint64_t *count)
{
	(void)k; (void)vcpu; (void)out; (void)cap; (void)count;
	return -ENODEV;
}
int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t vcpu, struct kd_dirty_gfn **entries,
			uint32_t *nentries)
{
	(void)k; (void)vcpu; (void)entries; (void)nentries;
	return -ENODEV;
}
int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *count)
{
	(void)k; (void)count;
	return -ENODEV;
}
int kd_kvm_internal_info(struct kd_kvm *k, struct kd_kvm_internal_info *out)
{
	(void)k; (void)out;
	return -ENODEV;
}

#endif
