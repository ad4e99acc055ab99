/*
 * real/kvm/kvm_run.c - kd_kvm_write: map the target pages for the guest
 * (aliases above 2^47), check every gfn, and run the guest program of
 * kvm_guest.c on the vCPU until its stores are done or the ring is full.
 */
#define _GNU_SOURCE
#include "kvm_internal.h"

#if KD_KVM_NATIVE

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
		uint32_t j = kvm_as0_upper(k, hi - 1); /* slots starting below hi */
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
			last = kvm_as0_lookup(k, gpa);
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
			struct uslot *s = kvm_as0_lookup(k, gpa);
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

#endif /* KD_KVM_NATIVE */
