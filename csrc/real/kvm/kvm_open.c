/*
 * real/kvm/kvm_open.c - whether /dev/kvm is usable here, and creating and
 * destroying the VM: vCPUs, their runs and rings, the internal slot's first
 * place. See kvm_backend.h for the API and kvm_internal.h for the state.
 */
#define _GNU_SOURCE
#include "kvm_internal.h"

#if KD_KVM_NATIVE

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
	r = kvm_place_internal(k, -1, 0, 0, &id, &gpa);
	if (!r)
		r = kvm_relocate(k, id, gpa);
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

#endif /* KD_KVM_NATIVE */
