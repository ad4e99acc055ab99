"""Builds the test guest's -bios image from guest/ with the system toolchain.

The image is built on first use and cached under $XDG_CACHE_HOME/pykvmdirty
(default ~/.cache/pykvmdirty), keyed by a hash of the sources, the layout
defines, the flags and the compiler's version: a changed source rebuilds, an
unchanged one reuses. Nothing binary is kept in the repository.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile

from . import layout

GUEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest")
SOURCES = ("boot.S", "guest.c", "guest.ld")
IMAGE_SIZE = 64 * 1024
CFLAGS = ["-m64", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-mcmodel=small",
          "-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-Wall", "-Werror"]
TOOLS = ("gcc", "ld", "objcopy")


class FirmwareBuildError(RuntimeError):
    """The guest image could not be built (missing toolchain or a compiler error)."""


def include_dir():
    """Where kvmdirty/page_draw.h is: installed with the package, or the source tree's."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in (os.path.join(pkg, "include"),
              os.path.join(os.path.dirname(pkg), "csrc", "include")):
        if os.path.exists(os.path.join(d, "kvmdirty", "page_draw.h")):
            return d
    raise FirmwareBuildError("kvmdirty/page_draw.h not found beside the package (%s/include): "
                             "reinstall pykvmdirty" % pkg)


def _defines():
    return ["-D%s=0x%x" % (k, v) for k, v in sorted(layout.BUILD_DEFINES.items())]


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pykvmdirty", "qemu-guest")


def _run(cmd, cwd):
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise FirmwareBuildError("%s not found: the guest image needs gcc, ld and objcopy"
                                 % cmd[0]) from None
    if r.returncode:
        raise FirmwareBuildError("%s failed: %s" % (" ".join(cmd[:2]), (r.stderr or r.stdout)
                                                    .strip()[-2000:]))
    return r.stdout


def source_key():
    """The hash that names the cached image."""
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(GUEST_DIR, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    with open(os.path.join(include_dir(), "kvmdirty", "page_draw.h"), "rb") as f:
        h.update(b"page_draw.h\0" + f.read() + b"\0")
    h.update(" ".join(CFLAGS + _defines()).encode())
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise FirmwareBuildError("%s not found: the guest image needs gcc, ld and objcopy"
                                     % tool)
        h.update(_run([tool, "--version"], GUEST_DIR).splitlines()[0].encode())
    return h.hexdigest()[:16]


def build(out_path):
    """Compile and link the image into out_path (64 KiB)."""
    with tempfile.TemporaryDirectory(prefix="pkd-guest-") as tmp:
        src = lambda n: os.path.join(GUEST_DIR, n)  # noqa: E731
        _run(["gcc"] + CFLAGS + _defines() + ["-c", src("boot.S"), "-o", "boot.o"], tmp)
        _run(["gcc"] + CFLAGS + _defines() + ["-I", include_dir(), "-c", src("guest.c"),
                                              "-o", "guest.o"], tmp)
        _run(["gcc", "-E", "-P", "-x", "c"] + _defines() + [src("guest.ld"), "-o", "guest.lds"],
             tmp)
        _run(["ld", "-nostdlib", "-static", "--no-dynamic-linker", "-z", "noexecstack",
              "-z", "max-page-size=4096", "-T", "guest.lds", "boot.o", "guest.o",
              "-o", "guest.elf"], tmp)
        _run(["objcopy", "-O", "binary", "guest.elf", "guest.bin"], tmp)
        size = os.path.getsize(os.path.join(tmp, "guest.bin"))
        if size != IMAGE_SIZE:
            raise FirmwareBuildError("guest image is %d bytes, expected %d" % (size, IMAGE_SIZE))
        shutil.copyfile(os.path.join(tmp, "guest.bin"), out_path)


def image_path():
    """The cached image's path, building it first if its sources changed."""
    key = source_key()
    d = _cache_dir()
    path = os.path.join(d, "guest-%s.bin" % key)
    if os.path.exists(path) and os.path.getsize(path) == IMAGE_SIZE:
        return path
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".build-")
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, path)   # atomic: concurrent builders each publish a whole image
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
