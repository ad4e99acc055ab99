/*
 * emu/bytemap.c - QEMU's 2010 representation, the baseline the two-level log
 * was proposed against. The kernel side is the flat log; a collect does what
 * QEMU's ram_save_live did then:
 *   1. KVM_GET_DIRTY_LOG of the whole slot into a bitmap buffer (and, with
 *      manual protect, KVM_CLEAR_DIRTY_LOG of what it got);
 *   2. for each dirty bit, phys_ram_dirty[page] = 0xff (every client:
 *      VGA 0x01, CODE 0x02, MIGRATION 0x08);
 *   3. walk the byte map (one byte per page: 128 MiB for 512 GiB) for the
 *      MIGRATION bit, clearing it for each page it sends.
 * The byte map is user memory: only the collector (under vm->lock) touches it.
 */
#include "emu/emu.h"

static int bytemap_collect(kd_vm *vm, struct kd_slot *s, uint64_t first, uint64_t end,
			   uint64_t *gfns, uint64_t cap, uint64_t *count, uint64_t *resume)
{
	const bool bounded = cap < end - first;
	uint64_t n = 0, p = first, scan_end = end;

	/* 1. the kernel GET (+ CLEAR), into the slot's scratch buffer */
	kd_flat_get(vm, s, s->scratch);
	vm->user.get_calls++;
	if (vm->manual_protect) {
		kd_flat_clear(vm, s, 0, s->npages, s->scratch);
		vm->user.clear_calls++;
	}
	/* 2. OR into the byte map */
	for (uint64_t w = 0; (w = kd_find_nonzero_word(s->scratch, w, s->nwords)) < s->nwords;
	     w++) {
		for (uint64_t bits = s->scratch[w]; bits; bits &= bits - 1)
			s->bytemap[w * 64 + (uint64_t)__builtin_ctzll(bits)] = 0xff;
	}
	/* 3. scan for MIGRATION */
	while ((p = kd_find_byte_with(s->bytemap, p, end, KD_CLIENT_MIGRATION)) < end) {
		if (bounded && n == cap) {
			scan_end = p;
			break;
		}
		s->bytemap[p] &= (uint8_t)~KD_CLIENT_MIGRATION;
		gfns[n++] = s->base_gfn + p;
		p++;
	}
	*resume = scan_end;
	vm->user.bytemap_bytes_scanned += scan_end - first;
	*count = n;
	return 0;
}

static int bytemap_log_alloc(kd_vm *vm, struct kd_slot *s)
{
	int r = kd_flat_log_alloc(vm, s);

	if (r)
		return r;
	s->bytemap = kd_pages_alloc(s->npages, true);
	s->scratch = kd_bitmap_alloc(s->nwords, false, 0);
	if (!s->bytemap || !s->scratch) {
		kd_slot_log_free(vm, s);
		return -ENOMEM;
	}
	kd_emu_log_enabled(vm, s);
	return 0;
}

/* GET and CLEAR are the kernel's: the flat log's. */
const struct kd_backend_ops kd_bytemap_ops = {
	.name = "bytemap",
	.has_bitmap = true,
	.check_config = kd_emu_check_config,
	KD_EMU_COMMON_OPS,
	.log_alloc = bytemap_log_alloc,
	.get_dirty_log = kd_flat_get,
	.clear_dirty_log = kd_flat_clear,
	.collect = bytemap_collect,
};
