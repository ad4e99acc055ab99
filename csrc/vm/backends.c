/*
 * vm/backends.c - the registration table: enum kd_backend -> the backend's
 * operations table (core/backend.h says how to add one), and the calls that
 * name or probe a backend.
 */
#include "core/backend.h"

/* Each defined in its backend's own file. */
extern const struct kd_backend_ops kd_flat_ops;     /* emu/flat.c */
extern const struct kd_backend_ops kd_twolevel_ops; /* emu/twolevel.c */
extern const struct kd_backend_ops kd_bytemap_ops;  /* emu/bytemap.c */
extern const struct kd_backend_ops kd_ring_ops;     /* emu/ring_backend.c */
extern const struct kd_backend_ops kd_kvm_ops;      /* real/kvm/kvm_ops.c */
extern const struct kd_backend_ops kd_uffd_ops;     /* real/uffd/uffd_ops.c */
extern const struct kd_backend_ops kd_hier_ops;     /* emu/hier.c */

static const struct kd_backend_ops *const backends[] = {
	[KD_BACKEND_FLAT] = &kd_flat_ops,
	[KD_BACKEND_TWOLEVEL] = &kd_twolevel_ops,
	[KD_BACKEND_BYTEMAP] = &kd_bytemap_ops,
	[KD_BACKEND_RING] = &kd_ring_ops,
	[KD_BACKEND_KVM] = &kd_kvm_ops,
	[KD_BACKEND_UFFD] = &kd_uffd_ops,
	[KD_BACKEND_HIER] = &kd_hier_ops,
};

const struct kd_backend_ops *kd_backend_ops(uint32_t backend)
{
	return backend < sizeof(backends) / sizeof(*backends) ? backends[backend] : NULL;
}

KD_API const char *kd_version(void)
{
	return KD_VERSION_STRING;
}

KD_API const char *kd_backend_name(uint32_t backend)
{
	const struct kd_backend_ops *ops = kd_backend_ops(backend);

	return ops ? ops->name : NULL;
}

KD_API int kd_backend_available(uint32_t backend, const char **why)
{
	const struct kd_backend_ops *ops = kd_backend_ops(backend);
	const char *reason = NULL;
	int r = 0;

	if (!ops) {
		reason = "unknown backend";
		r = -EINVAL;
	} else if (ops->available) {
		r = ops->available(&reason);
	}
	if (why)
		*why = reason;
	return r;
}
