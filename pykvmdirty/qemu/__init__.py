"""Real QEMU: the test guest, the migration runner and the QEMU profile."""
