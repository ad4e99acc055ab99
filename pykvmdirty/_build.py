"""cffi build script (API, out-of-line mode) for pykvmdirty._native.

The cdef is derived from the public headers, csrc/include/kvmdirty/vm.h (the
VM API) and csrc/include/kvmdirty/migrate.h (built on it), in that order: the
two that csrc/include/kvmdirty.h, the one file C users include, includes. So
the C API is declared in exactly one place: preprocessor lines become
``#define NAME ...`` (values taken from the compiler), export macros drop.
"""
import os
import platform
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
HEADERS = [os.path.join(CSRC, "include", "kvmdirty", "vm.h"),
           os.path.join(CSRC, "include", "kvmdirty", "migrate.h")]
#: installed beside the library: the umbrella, the API headers, and the page
#: draws the firmware guest QEMU migrates compiles in (no API: static inline,
#: not in the cdef)
INSTALLED_HEADERS = ([os.path.join(CSRC, "include", "kvmdirty.h")] + HEADERS
                     + [os.path.join(CSRC, "include", "kvmdirty", "page_draw.h")])


def read_make_vars(path):
    """`NAME = words` assignments of a make fragment (continuations joined)."""
    text = open(path).read().replace("\\\n", " ")
    return {m.group(1): m.group(2).split()
            for m in re.finditer(r"^([A-Z0-9_]+)\s*=\s*(.*)$", text, flags=re.M)}


def read_sources(path=os.path.join(CSRC, "sources.mk")):
    """KD_SOURCES from csrc/sources.mk: the one list the Makefile uses too."""
    sources = read_make_vars(path)["KD_SOURCES"]
    names = [os.path.basename(s) for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # an archive keeps one member per name: the other would vanish
        raise SystemExit("csrc/sources.mk: file names must be unique across folders: %s"
                         % ", ".join(dup))
    return sources


SOURCES = read_sources()
# The public headers' folder, and csrc/ (internal headers are named from it:
# "core/internal.h", "emu/emu.h"); relative to the repository root.
INCLUDE_DIRS = [os.path.relpath(os.path.join(CSRC, "include"), ROOT),
                os.path.relpath(CSRC, ROOT)]

# Compiler flags: csrc/build.mk, which the Makefile reads too.
BUILD_VARS = read_make_vars(os.path.join(CSRC, "build.mk"))
CFLAGS = BUILD_VARS["KD_OPT"] + BUILD_VARS["KD_CFLAGS"]
if platform.machine() in ("x86_64", "AMD64"):
    CFLAGS += BUILD_VARS["KD_CFLAGS_X86_64"]
LDFLAGS = BUILD_VARS["KD_LDFLAGS"]
# The pkg-config template, shared with the Makefile (@PREFIX@, @VERSION@).
PC_TEMPLATE = os.path.join(CSRC, "kvmdirty.pc.in")


def pc_text(prefix, version):
    """kvmdirty.pc from csrc/kvmdirty.pc.in."""
    text = open(PC_TEMPLATE).read()
    return text.replace("@PREFIX@", prefix).replace("@VERSION@", version)


def cdef_from_headers(paths=HEADERS):
    """Turn the public headers, in order, into one cffi cdef text."""
    return "".join(cdef_from_header(p) for p in paths)


def cdef_from_header(path):
    """Turn one public header into cffi cdef text."""
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
    return list(BUILD_VARS["KD_SANITIZE"]) if sanitizing() else []


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_headers())
ffibuilder.set_source(
    "pykvmdirty._native",
    '#include "kvmdirty.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s), ROOT) for s in SOURCES],
    include_dirs=INCLUDE_DIRS,
    extra_compile_args=CFLAGS + sanitize_flags(),
    extra_link_args=LDFLAGS + sanitize_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
