"""Builds the Linux guest's initramfs from installed programs, and finds its kernel.

The archive is an uncompressed newc cpio (the kernel unpacks it without a
decompressor, which under TCG would cost seconds of emulated CPU) holding:

- ``/init``: a busybox shell script (:func:`init_script`) that mounts proc,
  sys, devtmpfs and a tmpfs on /tmp, starts the heartbeat and the workload
  named by ``pkd.workload=`` on the kernel command line (workloads.py), and
  then waits forever (init must never exit);
- ``/bin/busybox`` (busybox-static; the applets are linked at boot with
  ``busybox --install -s``);
- ``/usr/bin/stress-ng`` and every shared library ``ldd`` names for it, at
  their real paths, plus the dynamic loader at /lib64.

It is built at first use and cached under $XDG_CACHE_HOME/pykvmdirty/linux
(default ~/.cache/pykvmdirty/linux) keyed by a hash of the builder's version,
the init script and each input file's path, size and mtime: a new busybox
or stress-ng rebuilds it, an unchanged system reuses it. Every entry has
mtime 0 and uid/gid 0, so the same inputs give the same bytes. Nothing
binary is kept in the repository.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple

from ..errors import QemuError
from .workloads import WORKLOADS

BUILD_VERSION = 1
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
STRESS_NG_PATHS = ("/usr/bin/stress-ng",)
INSTALL_HINT = ("apt-get install -y --no-install-recommends linux-image-cloud-amd64 "
                "busybox-static stress-ng")


class LinuxGuestError(QemuError):
    """The Linux guest cannot be built here: a missing kernel or program."""


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pykvmdirty", "linux")


# -- the kernel --------------------------------------------------------------------------

def _version_key(path):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", os.path.basename(path))]


def find_kernel(path: Optional[str] = None) -> str:
    """The kernel to boot: `path` if given (checked), else the newest readable
    /boot/vmlinuz-* (Debian's linux-image packages install there)."""
    if path:
        if not os.path.isfile(path):
            raise LinuxGuestError("--kernel %s: no such file" % path)
        if not os.access(path, os.R_OK):
            raise LinuxGuestError("--kernel %s: not readable" % path)
        with open(path, "rb") as f:
            head = f.read(0x210)
        if len(head) < 0x206 or head[0x202:0x206] != b"HdrS":
            raise LinuxGuestError("--kernel %s: not an x86 Linux kernel image (no bzImage "
                                  "'HdrS' header)" % path)
        return path
    found = sorted((p for p in glob.glob("/boot/vmlinuz-*") if os.access(p, os.R_OK)),
                   key=_version_key)
    if not found:
        raise LinuxGuestError("no readable kernel in /boot (give --kernel PATH, or: %s)"
                              % INSTALL_HINT)
    return found[-1]


# -- the programs ------------------------------------------------------------------------

def _first(paths, what):
    for p in paths:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise LinuxGuestError("%s not found (%s); install it with: %s"
                          % (what, " or ".join(paths), INSTALL_HINT))


def shared_libraries(exe) -> List[str]:
    """The files ldd names for exe (libraries and the dynamic loader), as
    absolute paths."""
    try:
        r = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LinuxGuestError("ldd %s failed: %s" % (exe, e)) from None
    if r.returncode != 0:
        raise LinuxGuestError("ldd %s failed: %s" % (exe, (r.stderr or r.stdout).strip()))
    out = []
    for line in r.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            out.append(m.group(1))
        elif "not found" in line:
            raise LinuxGuestError("ldd %s: a library is missing: %s" % (exe, line.strip()))
    return out


def init_script() -> str:
    """/init: mounts, the heartbeat, the workload named on the command line."""
    cases = "".join("    %s)\n%s\n        ;;\n"
                    % (name, "\n".join("        " + ln for ln in lines.splitlines()))
                    for name, (_, lines) in sorted(WORKLOADS.items()))
    return """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=75%% tmp /tmp
wl=$(sed -n 's/.*pkd\\.workload=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
echo "pkd-boot $(cut -d' ' -f1 /proc/uptime) workload=$wl"
(i=0; while :; do i=$((i+1)); echo "pkd-tick $i"; sleep 0.2; done) &
cd /tmp
case "$wl" in
%s    *)
        echo "pkd-error unknown workload $wl"
        ;;
esac
while :; do sleep 3600; done
""" % cases


# -- the archive ---------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    nb = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
    out = hdr.encode() + nb
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _inputs(with_stress_ng=True) -> Tuple[str, List[str], Dict[str, str]]:
    """(busybox path, files to copy, symlinks name -> target)."""
    busybox = _first(BUSYBOX_PATHS, "busybox (busybox-static)")
    files, links = [], {}
    if with_stress_ng:
        sng = _first(STRESS_NG_PATHS, "stress-ng")
        files.append(sng)
        for lib in shared_libraries(sng):
            real = os.path.realpath(lib)
            files.append(real)
            if real != lib:
                links[lib] = real
    return busybox, files, links


def build(with_stress_ng=True) -> bytes:
    """The archive's bytes."""
    busybox, files, links = _inputs(with_stress_ng)
    entries: List[Tuple[str, int, bytes]] = []
    dirs = set()

    def add_dirs(path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, 0o040755, b""))

    def add_file(path, data, mode=0o100755):
        add_dirs(path)
        entries.append((path.lstrip("/"), mode, data))

    for d in ("proc", "sys", "dev", "tmp", "bin", "usr/bin"):
        add_dirs(d + "/x")
    add_file("/init", init_script().encode())
    with open(busybox, "rb") as f:
        add_file("/bin/busybox", f.read())
    for p in sorted(set(files)):
        with open(p, "rb") as f:
            add_file(p, f.read())
    for name, target in sorted(links.items()):
        add_dirs(name)
        entries.append((name.lstrip("/"), 0o120777, target.encode()))
    out = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    out += _cpio_entry("TRAILER!!!", 0, b"", 0)
    return out + b"\0" * (-len(out) % 512)


def _key(with_stress_ng=True) -> str:
    busybox, files, links = _inputs(with_stress_ng)
    h = hashlib.sha256()
    h.update(b"pykvmdirty-initramfs %d\n" % BUILD_VERSION)
    h.update(init_script().encode())
    for p in [busybox] + sorted(set(files)):
        st = os.stat(p)
        h.update(("%s %d %d\n" % (p, st.st_size, st.st_mtime_ns)).encode())
    for name, target in sorted(links.items()):
        h.update(("%s -> %s\n" % (name, target)).encode())
    return h.hexdigest()[:16]


def initramfs_path(with_stress_ng=True) -> str:
    """The cached archive (built now if it is missing or its inputs changed)."""
    d = cache_dir()
    path = os.path.join(d, "initramfs-%s%s.cpio" % (_key(with_stress_ng),
                                                     "" if with_stress_ng else "-small"))
    if os.path.exists(path):
        return path
    os.makedirs(d, exist_ok=True)
    data = build(with_stress_ng)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".initramfs-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def missing() -> Optional[str]:
    """None if a kernel, busybox and stress-ng are here, else what is missing
    and how to install it (tests skip with this)."""
    try:
        find_kernel()
        _first(BUSYBOX_PATHS, "busybox (busybox-static)")
        _first(STRESS_NG_PATHS, "stress-ng")
    except LinuxGuestError as e:
        return str(e)
    if shutil.which("ldd") is None:
        return "ldd is missing (libc-bin)"
    return None
