/*
 * backend_stubs.c - placeholders for the real-kernel backends while they are
 * not built: every entry point reports -ENOSYS.
 */
#include "internal.h"

const char *kd_kvm_unavailable_reason(void) { return "kvm backend not built"; }
int kd_kvm_open(uint32_t a, uint32_t b, struct kd_kvm **o) { (void)a; (void)b; (void)o; return -ENOSYS; }
void kd_kvm_close(struct kd_kvm *k) { (void)k; }
int kd_kvm_set_user_memory_region(struct kd_kvm *k, uint32_t a, uint32_t b, uint64_t c, uint64_t d) { (void)k; (void)a; (void)b; (void)c; (void)d; return -ENOSYS; }
int kd_kvm_slot_memory(struct kd_kvm *k, uint32_t a, void **b, uint64_t *c) { (void)k; (void)a; (void)b; (void)c; return -ENOSYS; }
int kd_kvm_enable_manual_protect(struct kd_kvm *k, uint64_t a) { (void)k; (void)a; return -ENOSYS; }
int kd_kvm_write(struct kd_kvm *k, uint32_t a, const uint64_t *b, uint64_t c, uint64_t d, uint64_t *e, uint32_t *f) { (void)k; (void)a; (void)b; (void)c; (void)d; (void)e; (void)f; return -ENOSYS; }
int kd_kvm_get_dirty_log(struct kd_kvm *k, uint32_t a, uint64_t *b) { (void)k; (void)a; (void)b; return -ENOSYS; }
int kd_kvm_clear_dirty_log(struct kd_kvm *k, uint32_t a, uint64_t b, uint32_t c, const uint64_t *d) { (void)k; (void)a; (void)b; (void)c; (void)d; return -ENOSYS; }
int kd_kvm_ring_harvest(struct kd_kvm *k, uint32_t a, struct kd_dirty_gfn *b, uint64_t c, uint64_t *d) { (void)k; (void)a; (void)b; (void)c; (void)d; return -ENOSYS; }
int kd_kvm_ring_entries(struct kd_kvm *k, uint32_t a, struct kd_dirty_gfn **b, uint32_t *c) { (void)k; (void)a; (void)b; (void)c; return -ENOSYS; }
int kd_kvm_reset_dirty_rings(struct kd_kvm *k, uint64_t *a) { (void)k; (void)a; return -ENOSYS; }
