"""Where libkvmdirty is installed: ``pykvmdirty-config --cflags --libs``.

C programs link the same library the Python package uses:
    cc prog.c $(pykvmdirty-config --cflags --libs)
or through pkg-config with PKG_CONFIG_PATH=$(pykvmdirty-config --pkgconfigdir).
"""
import argparse
import os
import sys

PKG = os.path.dirname(os.path.abspath(__file__))


def include_dir():
    return os.path.join(PKG, "include")


def lib_dir():
    return os.path.join(PKG, "lib")


def pkgconfig_dir():
    return os.path.join(lib_dir(), "pkgconfig")


def cflags():
    return "-I%s" % include_dir()


def build_ldflags():
    """Link flags the library was built to need (the sanitizers, with KVMDIRTY_SANITIZE=1)."""
    try:
        with open(os.path.join(lib_dir(), "ldflags.txt")) as f:
            return f.read().split()
    except OSError:
        return []


def libs(static=False):
    extra = " ".join([""] + build_ldflags())
    if static:
        return "%s -pthread%s" % (os.path.join(lib_dir(), "libkvmdirty.a"), extra)
    return "-L%s -Wl,-rpath,%s -lkvmdirty -pthread%s" % (lib_dir(), lib_dir(), extra)


def main(argv=None):
    p = argparse.ArgumentParser(prog="pykvmdirty-config",
                                description="Compiler and linker flags for libkvmdirty.")
    p.add_argument("--cflags", action="store_true", help="flags to compile against kvmdirty.h")
    p.add_argument("--libs", action="store_true", help="flags to link libkvmdirty.so")
    p.add_argument("--static", action="store_true", help="with --libs: link libkvmdirty.a")
    p.add_argument("--includedir", action="store_true")
    p.add_argument("--libdir", action="store_true")
    p.add_argument("--pkgconfigdir", action="store_true")
    p.add_argument("--version", action="store_true")
    a = p.parse_args(argv)
    out = []
    if a.version:
        from . import __version__
        out.append(__version__)
    if a.cflags:
        out.append(cflags())
    if a.libs:
        out.append(libs(a.static))
    if a.includedir:
        out.append(include_dir())
    if a.libdir:
        out.append(lib_dir())
    if a.pkgconfigdir:
        out.append(pkgconfig_dir())
    if not out:
        p.print_help()
        return 2
    missing = [f for f in (os.path.join(include_dir(), "kvmdirty.h"),
                           os.path.join(include_dir(), "kvmdirty", "vm.h"),
                           os.path.join(lib_dir(), "libkvmdirty.so")) if not os.path.exists(f)]
    if missing:
        print("pykvmdirty-config: not installed with the package: %s" % ", ".join(missing),
              file=sys.stderr)
        return 1
    print(" ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
