"""cffi build script (API, out-of-line mode) for pykvmdirty._native.

The cdef is derived from the one public header, csrc/include/kvmdirty.h, so the
C API is declared in exactly one place: preprocessor lines become
``#define NAME ...`` (values taken from the compiler), export macros drop.
"""
import os
import platform
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "include", "kvmdirty.h")


def read_sources(path=os.path.join(CSRC, "sources.mk")):
    """KD_SOURCES from csrc/sources.mk: the one list the Makefile uses too."""
    text = open(path).read().replace("\\\n", " ")
    m = re.search(r"^KD_SOURCES\s*=\s*(.*)$", text, flags=re.M)
    sources = m.group(1).split()
    names = [os.path.basename(s) for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # an archive keeps one member per name: the other would vanish
        raise SystemExit("csrc/sources.mk: file names must be unique across folders: %s"
                         % ", ".join(dup))
    return sources


SOURCES = read_sources()

CFLAGS = ["-O2", "-std=gnu11", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra"]
if platform.machine() in ("x86_64", "AMD64"):
    CFLAGS.append("-mpopcnt")  # every x86-64 CPU since 2008; the scans count bits


def cdef_from_header(path=HEADER):
    """Turn the public header into cffi cdef text."""
    out = []
    skip_cpp = False
    for line in open(path):
        stripped = line.strip()
        if stripped.startswith("#"):
            if stripped.startswith("#ifdef __cplusplus"):
                skip_cpp = True
            elif stripped.startswith("#endif") and skip_cpp:
                skip_cpp = False
            m = re.match(r"#define\s+(KD_[A-Z0-9_]+)\s+(\S.*)$", stripped)
            if m and m.group(1) not in ("KD_API",) and not m.group(2).startswith('"'):
                out.append("#define %s ...\n" % m.group(1))
            continue
        if skip_cpp:
            continue
        out.append(line.replace("KD_API ", ""))
    text = "".join(out)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return text


def sanitizing():
    return os.environ.get("KVMDIRTY_SANITIZE", "") in ("1", "yes", "true")


def sanitize_flags():
    """KVMDIRTY_SANITIZE=1: build the C core with ASan and UBSan (any report aborts)."""
    if sanitizing():
        return ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer", "-g"]
    return []


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header())
ffibuilder.set_source(
    "pykvmdirty._native",
    '#include "kvmdirty.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s), ROOT) for s in SOURCES],
    include_dirs=[os.path.relpath(os.path.join(CSRC, "include"), ROOT),
                  os.path.relpath(CSRC, ROOT)],
    extra_compile_args=CFLAGS + sanitize_flags(),
    extra_link_args=["-pthread"] + sanitize_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
