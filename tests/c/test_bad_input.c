/*
 * test_bad_input.c - every bad call into libkvmdirty returns the expected
 * negative errno without crashing (run under KVMDIRTY_SANITIZE builds too).
 * Build: cc tests/c/test_bad_input.c $(pykvmdirty-config --cflags --libs)
 * Prints one line per case and "N passed, M failed" at the end; exit 1 on failure.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kvmdirty.h"

static int passed, failed;

static void expect(const char *what, int got, int want)
{
	if (got == want) {
		passed++;
	} else {
		failed++;
		printf("FAIL %s: got %d (%s), want %d\n", what, got, strerror(-got), want);
	}
}

#define EXPECT(call, want) expect(#call, (call), (want))

int main(void)
{
	struct kd_vm_config cfg = {.backend = KD_BACKEND_FLAT, .nvcpus = 2};
	struct kd_vm_config ring = {.backend = KD_BACKEND_RING, .nvcpus = 1, .ring_entries = 4096};
	struct kd_collect_result res;
	struct kd_write_result wr;
	struct kd_slot_info info;
	struct kd_log_memory mem;
	struct kd_stats st;
	uint64_t buf[64], count, gfn = 5, huge = 1ull << 60;
	uint32_t used, limit;
	kd_vm *vm = NULL, *rvm = NULL;

	/* creation */
	EXPECT(kd_vm_create(NULL, &vm), -EINVAL);
	EXPECT(kd_vm_create(&cfg, NULL), -EINVAL);
	{
		struct kd_vm_config bad = cfg;
		bad.nvcpus = 0;
		EXPECT(kd_vm_create(&bad, &vm), -EINVAL);
		bad = cfg;
		bad.backend = 99;
		EXPECT(kd_vm_create(&bad, &vm), -EINVAL);
		bad = cfg;
		bad.reserved[1] = 1;
		EXPECT(kd_vm_create(&bad, &vm), -EINVAL);
		bad = cfg;
		bad.address_spaces = 3;
		EXPECT(kd_vm_create(&bad, &vm), -EINVAL);
		bad = ring;
		bad.ring_entries = 3000;
		EXPECT(kd_vm_create(&bad, &vm), -EINVAL);
		bad.ring_entries = 1u << 17;
		EXPECT(kd_vm_create(&bad, &vm), -E2BIG);
	}
	EXPECT(kd_vm_create(&cfg, &vm), 0);
	EXPECT(kd_vm_create(&ring, &rvm), 0);

	/* NULL handles */
	EXPECT(kd_set_user_memory_region(NULL, 0, 0, 0, 4096), -EINVAL);
	EXPECT(kd_write(NULL, 0, &gfn, 1, 0, &wr), -EINVAL);
	EXPECT(kd_get_dirty_log(NULL, 0, buf, 64), -EINVAL);
	EXPECT(kd_clear_dirty_log(NULL, 0, 0, 64, buf), -EINVAL);
	EXPECT(kd_collect(NULL, 0, 0, 1, buf, 64, &res), -EINVAL);
	EXPECT(kd_stats_get(NULL, &st), -EINVAL);
	EXPECT(kd_stats_get(vm, NULL), -EINVAL);
	EXPECT(kd_slot_info(vm, 0, NULL), -EINVAL);
	EXPECT(kd_log_memory(NULL, 0, &mem), -EINVAL);
	EXPECT(kd_log_memory(vm, 0, NULL), -EINVAL);
	EXPECT(kd_reset_dirty_rings(NULL, &count), -EINVAL);
	kd_vm_destroy(NULL);

	/* memslots */
	EXPECT(kd_set_user_memory_region(vm, 0, KD_MEM_LOG_DIRTY_PAGES, 0, 64 << 20), 0);
	EXPECT(kd_set_user_memory_region(vm, KD_USER_MEM_SLOTS, 0, 1ull << 32, 4096), -EINVAL);
	EXPECT(kd_set_user_memory_region(vm, 1, 0, 1ull << 32, huge), -EINVAL);
	EXPECT(kd_set_user_memory_region(vm, 1, 0, ~0ull & ~4095ull, 8192), -EINVAL);
	EXPECT(kd_set_user_memory_region(vm, 1, 0, 4096, 4096), -EEXIST);
	EXPECT(kd_set_user_memory_region(vm, 1, 1u << 7, 1ull << 32, 4096), -EINVAL);
	EXPECT(kd_slot_info(vm, 1, &info), -ENOENT);
	EXPECT(kd_log_memory(vm, 1, &mem), -ENOENT);
	EXPECT(kd_log_memory(vm, KD_USER_MEM_SLOTS, &mem), -EINVAL);
	EXPECT(kd_log_memory(vm, 0, &mem), 0);
	EXPECT(mem.reserved == 4096 && mem.resident == 4096, 1); /* a 2 KiB bitmap: one page */

	/* writes */
	EXPECT(kd_write(vm, 2, &gfn, 1, 0, &wr), -EINVAL);
	EXPECT(kd_write(vm, 0, NULL, 1, 0, &wr), -EFAULT);
	EXPECT(kd_write(vm, 0, &gfn, 1, 0, NULL), -EINVAL);
	EXPECT(kd_write(vm, 0, &huge, 1, 0, &wr), -EFAULT);
	EXPECT(kd_write(vm, 0, &gfn, 1, 0, &wr), 0);

	/* GET / CLEAR / collect */
	EXPECT(kd_get_dirty_log(vm, 0, NULL, 256), -EFAULT);
	EXPECT(kd_get_dirty_log(vm, 0, buf, 64), -EFAULT); /* 256 words needed */
	EXPECT(kd_get_dirty_log(vm, 7, buf, 64), -ENOENT);
	EXPECT(kd_get_dirty_log(vm, 3u << 16, buf, 64), -EINVAL);
	EXPECT(kd_clear_dirty_log(vm, 0, 1, 64, buf), -EINVAL);
	EXPECT(kd_clear_dirty_log(vm, 0, 0, 64, NULL), -EFAULT);
	EXPECT(kd_clear_dirty_log(vm, 0, huge, 64, buf), -EINVAL);
	EXPECT(kd_clear_dirty_log(vm, 0, 0, 0xffffffffu, buf), -EINVAL);
	EXPECT(kd_collect(vm, 0, 0, huge, buf, 64, &res), -EINVAL);
	EXPECT(kd_collect(vm, 0, huge, 1, buf, 64, &res), -EINVAL);
	EXPECT(kd_collect(vm, 0, 0, 16384, buf, 10, &res), -EINVAL); /* cap < 64 */
	EXPECT(kd_collect(vm, 0, 0, 16384, NULL, 64, &res), -EFAULT);
	EXPECT(kd_collect(vm, 0, 0, 16384, buf, 64, NULL), -EINVAL);
	EXPECT(kd_collect(vm, 9, 0, 1, buf, 64, &res), -ENOENT);
	/* the failed calls changed nothing: the page written is still dirty */
	EXPECT(kd_collect(vm, 0, 0, 16384, buf, 64, &res), 0);
	expect("one page still dirty", (int)res.count, 1);

	/* ring calls */
	EXPECT(kd_ring_harvest(vm, 0, (struct kd_dirty_gfn *)buf, 4, &count), -ENXIO);
	EXPECT(kd_ring_harvest(rvm, 5, (struct kd_dirty_gfn *)buf, 4, &count), -EINVAL);
	EXPECT(kd_ring_harvest(rvm, 0, NULL, 4, &count), -EINVAL);
	EXPECT(kd_ring_usage(rvm, 0, &used, NULL), -EINVAL);
	EXPECT(kd_reset_dirty_rings(vm, &count), -EINVAL);
	EXPECT(kd_get_dirty_log(rvm, 0, buf, 64), -ENXIO);
	EXPECT(kd_enable_manual_protect(vm, 1ull << 5), -EINVAL);
	/* KVM: INITIALLY_SET only together with MANUAL_PROTECT_ENABLE */
	EXPECT(kd_enable_manual_protect(vm, KD_INITIALLY_SET), -EINVAL);
	EXPECT(kd_enable_manual_protect(vm, KD_INITIALLY_SET | 4), -EINVAL);
	EXPECT(kd_enable_manual_protect(vm, KD_MANUAL_PROTECT_ENABLE | 4), -EINVAL);

	/* helpers */
	EXPECT((int)kd_bitmap_to_gfns(NULL, 64, 0, buf, 64), -EINVAL);
	EXPECT(kd_writers_start(vm, 3, NULL, NULL, 1, 0, NULL), -EINVAL);
	EXPECT(kd_writers_join(NULL, NULL), -EINVAL);
	EXPECT(kd_writers_wait(NULL), -EINVAL);
	EXPECT(kd_get_dirty_log_sized(vm, 0, buf, 64, NULL), -EINVAL);
	EXPECT(kd_get_dirty_log_sized(vm, 7, buf, 64, &count), -ENOENT);
	{ /* an unlock without a lock would hand the lock to nobody */
		struct kd_bql_config bc = {.nvcpus = 1};
		kd_bql *b = NULL;
		EXPECT(kd_bql_create(&bc, &b), 0);
		EXPECT(kd_bql_unlock(b), -EPERM);
		EXPECT(kd_bql_lock(b, KD_BQL_HOLDER_ITERATION), 0); /* does not hang */
		EXPECT(kd_bql_unlock(b), 0);
		EXPECT(kd_bql_unlock(b), -EPERM);
		kd_bql_destroy(b);
	}
	expect("backend name of 99 is NULL", kd_backend_name(99) == NULL, 1);
	(void)limit;

	kd_vm_destroy(vm);
	kd_vm_destroy(rvm);
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
