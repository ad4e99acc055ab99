/*
 * emu/flat.c - the flat dirty log: one bit per page, KVM_GET_DIRTY_LOG and
 * KVM_CLEAR_DIRTY_LOG semantics (virt/kvm/kvm_main.c).
 *
 * Classic GET: for each word with bits set, mask = xchg(word, 0), protect
 * exactly those pages, one TLB flush if any; the snapshot is what returns.
 * Manual protect: GET copies the live bitmap; CLEAR takes
 * mask &= fetch_andnot(word, mask) and protects only what it cleared.
 * collect = the fast path of both: it reads the log for non-zero words (no
 * stores to clean words), takes the range's bits and emits gfns directly.
 * All callers hold vm->lock; writers race with every step here.
 */
#include "emu/emu.h"

int kd_flat_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	bool ones = vm->manual_protect & KD_INITIALLY_SET;

	s->dirty = kd_bitmap_alloc(s->nwords, ones, s->npages);
	if (!s->dirty)
		return -ENOMEM;
	if (vm->cfg.tracking == KD_TRACK_WRITE_PROTECT)
		s->writable = s->dirty; /* see struct kd_slot */
	else
		s->writable = kd_bitmap_alloc(s->nwords, ones, s->npages);
	if (!s->writable) {
		kd_slot_log_free(vm, s);
		return -ENOMEM;
	}
	return 0;
}

/* With INITIALLY_SET, x86 KVM leaves 4K sptes writable until a CLEAR
 * reaches them; otherwise enabling the log protects every page. */
void kd_emu_log_enabled(kd_vm *vm, struct kd_slot *s)
{
	if (!(vm->manual_protect & KD_INITIALLY_SET))
		kd_count_reprotect(vm, s->npages, true);
}

static int flat_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	int r = kd_flat_log_alloc(vm, s);

	if (!r)
		kd_emu_log_enabled(vm, s);
	return r;
}

int kd_flat_get(kd_vm *vm, struct kd_slot *s, uint64_t *bitmap)
{
	uint64_t reprotected = 0, w = 0;

	vm->user.words_scanned += s->nwords;
	if (vm->manual_protect) {
		for (uint64_t i = 0; i < s->nwords; i++)
			bitmap[i] = __atomic_load_n(&s->dirty[i], __ATOMIC_RELAXED);
		return 0;
	}
	while (w < s->nwords) {
		uint64_t nz = kd_find_nonzero_word(s->dirty, w, s->nwords);
		memset(bitmap + w, 0, (nz - w) * 8);
		if (nz == s->nwords)
			break;
		bitmap[nz] = __atomic_exchange_n(&s->dirty[nz], 0, __ATOMIC_SEQ_CST);
		reprotected += kd_reprotect_word(s, nz, bitmap[nz]);
		w = nz + 1;
	}
	kd_count_reprotect(vm, reprotected, true);
	return 0;
}

int kd_flat_clear(kd_vm *vm, struct kd_slot *s, uint64_t first, uint32_t num,
		  const uint64_t *mask)
{
	uint64_t reprotected = 0, nw = (num + 63) / 64;

	for (uint64_t i = 0; i < nw; i++) {
		uint64_t w = first / 64 + i, m = mask[i];
		if (!m)
			continue;
		if (w == s->nwords - 1 && (s->npages & 63)) /* bits past the end */
			m &= ~0ull >> (64 - (s->npages & 63));
		m &= __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST);
		reprotected += kd_reprotect_word(s, w, m);
	}
	vm->user.words_scanned += nw;
	kd_count_reprotect(vm, reprotected, false);
	return 0;
}

static int flat_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	uint64_t n = 0, reprotected = 0, w = first / 64, wend = (end + 63) / 64;
	const bool bounded = cap < end - first;

	*resume = end;
	while ((w = kd_find_nonzero_word(s->dirty, w, wend)) < wend) {
		uint64_t m = kd_range_mask(w, first, end), bits;
		if (bounded && cap - n < 64 && (s->dirty[w] & m)) {
			*resume = w * 64 > first ? w * 64 : first;
			wend = w;
			break;
		}
		bits = m == ~0ull ? __atomic_exchange_n(&s->dirty[w], 0, __ATOMIC_SEQ_CST)
				  : __atomic_fetch_and(&s->dirty[w], ~m, __ATOMIC_SEQ_CST) & m;
		reprotected += kd_reprotect_word(s, w, bits);
		n = kd_emit_bits(bits, s->base_gfn + w * 64, gfns, n);
		w++;
	}
	vm->user.words_scanned += wend - first / 64;
	kd_count_reprotect(vm, reprotected, false);
	*count = n;
	return 0;
}

const struct kd_backend_ops kd_flat_ops = {
	.name = "flat",
	.has_bitmap = true,
	.check_config = kd_emu_check_config,
	KD_EMU_COMMON_OPS,
	.log_alloc = flat_log_alloc,
	.get_dirty_log = kd_flat_get,
	.clear_dirty_log = kd_flat_clear,
	.collect = flat_collect,
};
