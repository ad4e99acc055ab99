# The one source list of libkvmdirty, read by csrc/Makefile and by
# pykvmdirty/_build.py (the cffi extension and the shared library are built
# from exactly these files).
KD_SOURCES = \
	bitmap.c \
	memslot.c \
	vm.c \
	write.c \
	log_flat.c \
	log_twolevel.c \
	log_bytemap.c \
	dirty_ring.c \
	writers.c \
	pending.c \
	uffd_backend.c \
	kvm_backend.c \
	kvm_guest.c \
	sendpath.c \
	wire.c \
	workload.c
