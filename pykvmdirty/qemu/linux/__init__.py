"""A real Linux guest for the QEMU runner: Debian's kernel, an initramfs built
here from installed programs (busybox-static, stress-ng), workloads by name,
progress over the serial console.

    apt-get install -y --no-install-recommends linux-image-cloud-amd64 \\
        busybox-static stress-ng qemu-system-x86
"""
