/*
 * ab_api.h - the libkvmdirty calls the A/B programs in bench/c/ use, looked
 * up in one build of the library (dlopen RTLD_LOCAL), so that two builds
 * (old and new, or two variants) run side by side in one process.
 */
#ifndef KD_BENCH_AB_API_H
#define KD_BENCH_AB_API_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvmdirty.h"

typedef struct {
	int (*vm_create)(const struct kd_vm_config *, kd_vm **);
	void (*vm_destroy)(kd_vm *);
	int (*region)(kd_vm *, uint32_t, uint32_t, uint64_t, uint64_t);
	int (*write)(kd_vm *, uint32_t, const uint64_t *, uint64_t, uint64_t, struct kd_write_result *);
	int (*collect)(kd_vm *, uint32_t, uint64_t, uint64_t, uint64_t *, uint64_t, struct kd_collect_result *);
	int (*collect_slots)(kd_vm *, const uint32_t *, uint32_t, uint32_t, uint64_t, uint64_t *,
			     uint64_t, struct kd_collect_slots_result *);
	int (*ws_start)(kd_vm *, uint32_t, const uint64_t *const *, const uint64_t *, uint64_t, uint64_t, kd_writers **);
	int (*ws_join)(kd_writers *, uint64_t *);
	uint64_t (*clock_ns)(void);
} api;

/* Every call of one build; exits with dlerror's words if it cannot. */
static inline void load(const char *path, api *a)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { printf("%s\n", dlerror()); exit(1); }
	a->vm_create = dlsym(h, "kd_vm_create"); a->vm_destroy = dlsym(h, "kd_vm_destroy");
	a->region = dlsym(h, "kd_set_user_memory_region"); a->write = dlsym(h, "kd_write");
	a->collect = dlsym(h, "kd_collect"); a->collect_slots = dlsym(h, "kd_collect_slots");
	a->ws_start = dlsym(h, "kd_writers_start"); a->ws_join = dlsym(h, "kd_writers_join");
	a->clock_ns = dlsym(h, "kd_clock_ns");
}

#endif
