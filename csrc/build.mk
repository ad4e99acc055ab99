# Compiler flags of libkvmdirty, defined once: read by csrc/Makefile and by
# pykvmdirty/_build.py (the cffi extension and setup.py's libkvmdirty).
# Plain `NAME = words` lines only: _build.py parses them.
KD_OPT = -O2
# -fvisibility=hidden: every symbol is internal unless declared KD_API
# (include/kvmdirty/vm.h), so internal declarations carry no annotation
KD_CFLAGS = -std=gnu11 -pthread -fvisibility=hidden -Wall -Wextra
# x86-64 only: every x86-64 CPU since 2008 has POPCNT; the scans count bits
KD_CFLAGS_X86_64 = -mpopcnt
KD_LDFLAGS = -pthread
# SANITIZE=1 (make) or KVMDIRTY_SANITIZE=1 (pip): ASan + UBSan, any report aborts
KD_SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
KD_SANITIZE_LDFLAGS = -fsanitize=address,undefined
# TSAN=1 (make): ThreadSanitizer, for the C race tests of .ci/run's TSan stage
# (suppressions: csrc/tsan.supp)
KD_TSAN = -fsanitize=thread -fno-omit-frame-pointer -g
KD_TSAN_LDFLAGS = -fsanitize=thread
