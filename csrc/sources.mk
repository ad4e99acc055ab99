# The one source list of libkvmdirty, read by csrc/Makefile and by
# pykvmdirty/_build.py (the cffi extension and the shared library are built
# from exactly these files). Layers, each including only those below it:
#   core/     data structures, locks, clock, counters, slot table, bitmaps
#   emu/      the emulated backends (flat, two-level, byte map, ring, hier),
#             their logs and the write-protect / PML write path
#   real/     the real-kernel backends: kvm (/dev/kvm) and uffd
#   vm/       the VM API (kvmdirty/vm.h): argument checks, then vm->ops
#   migrate/  send path, wire format, workloads; uses the public API only
#             (and core/cpu_features.h, the CPU's vector features)
KD_SOURCES = \
	core/lock.c \
	core/counters.c \
	core/slots.c \
	core/region_check.c \
	core/cpu_features.c \
	core/bitmap.c \
	core/pending.c \
	core/ring_collect.c \
	emu/common.c \
	emu/wp_write.c \
	emu/flat.c \
	emu/twolevel.c \
	emu/bytemap.c \
	emu/dirty_ring.c \
	emu/ring_backend.c \
	emu/hier_log.c \
	emu/hier.c \
	real/kvm/kvm_ops.c \
	real/kvm/kvm_open.c \
	real/kvm/kvm_slots.c \
	real/kvm/kvm_run.c \
	real/kvm/kvm_dirty.c \
	real/kvm/kvm_stub.c \
	real/kvm/kvm_guest.c \
	real/uffd/uffd_ops.c \
	real/uffd/uffd_backend.c \
	real/uffd/uffd_table.c \
	real/uffd/uffd_segv.c \
	real/uffd/uffd_fd.c \
	real/uffd/uffd_collect.c \
	real/uffd/uffd_probe.c \
	vm/backends.c \
	vm/vm.c \
	vm/memslot.c \
	vm/log.c \
	vm/ring.c \
	vm/write.c \
	vm/stats.c \
	migrate/crc32c.c \
	migrate/zero.c \
	migrate/page_hash.c \
	migrate/page_versions.c \
	migrate/dirtyrate.c \
	migrate/wire_encode.c \
	migrate/wire_dest.c \
	migrate/prefault.c \
	migrate/sendpath.c \
	migrate/vcpu_pool.c \
	migrate/writers.c \
	migrate/workload.c \
	migrate/guest_exits.c \
	migrate/collect_stall.c
