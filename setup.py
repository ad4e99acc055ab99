"""pykvmdirty: a dirty-page-tracking kernel-interface emulator (C core via cffi).

Besides the cffi extension, the build installs libkvmdirty for C programs:
pykvmdirty/lib/libkvmdirty.so and .a, pykvmdirty/include/kvmdirty.h (and the
kvmdirty/{vm,migrate,page_draw}.h it and the firmware guest include) and
pykvmdirty/lib/pkgconfig/kvmdirty.pc, compiled from the
same source list (csrc/sources.mk) with the same flags (csrc/build.mk) as the
extension; the .pc comes from csrc/kvmdirty.pc.in, as the Makefile's does. `pykvmdirty-config --cflags --libs` finds them.
"""
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_module():
    sys.path.insert(0, os.path.join(ROOT, "pykvmdirty"))
    try:
        import _build
    finally:
        sys.path.pop(0)
    return _build


class BuildExtAndLibrary(build_ext):
    """build_ext, then libkvmdirty (.so, .a, header, .pc) into the package."""

    def run(self):
        super().run()
        b = build_module()
        pkg = os.path.join(ROOT if self.inplace else self.build_lib, "pykvmdirty")
        libdir = os.path.join(pkg, "lib")
        incdir = os.path.join(pkg, "include")
        os.makedirs(os.path.join(libdir, "pkgconfig"), exist_ok=True)
        os.makedirs(incdir, exist_ok=True)
        cc = self.compiler
        objs = cc.compile([os.path.join("csrc", s) for s in b.SOURCES],
                          output_dir=os.path.join(self.build_temp, "libkvmdirty"),
                          include_dirs=b.INCLUDE_DIRS,
                          extra_postargs=b.CFLAGS + ["-fPIC"] + b.sanitize_flags())
        cc.link_shared_object(objs, "libkvmdirty.so", output_dir=libdir,
                              extra_postargs=b.LDFLAGS + b.sanitize_flags())
        archive = os.path.join(libdir, "libkvmdirty.a")
        if os.path.exists(archive):  # ar would add to (and keep) old members
            os.remove(archive)
        cc.create_static_lib(objs, "kvmdirty", output_dir=libdir)
        os.makedirs(os.path.join(incdir, "kvmdirty"), exist_ok=True)
        for h in b.INSTALLED_HEADERS:  # kvmdirty.h, kvmdirty/{vm,migrate,page_draw}.h
            rel = os.path.relpath(h, os.path.join(ROOT, "csrc", "include"))
            shutil.copy(h, os.path.join(incdir, rel))
        with open(os.path.join(libdir, "ldflags.txt"), "w") as f:
            f.write(" ".join(b.sanitize_flags()))  # what a program linking us needs too
        version = self.distribution.get_version()
        with open(os.path.join(libdir, "pkgconfig", "kvmdirty.pc"), "w") as f:
            f.write(b.pc_text("${pcfiledir}/../..", version))


setup(
    name="pykvmdirty",
    version="0.1.0",
    description="Dirty-page-tracking KVM interface emulator: flat, two-level, byte-map, "
    "ring and real /dev/kvm dirty logs, and a live-migration scan-and-send loop",
    packages=find_packages(include=["pykvmdirty", "pykvmdirty.*"]),
    package_data={
        # the cost model's measured defaults (CostModel reads them at import)
        "pykvmdirty": ["data/cost_model.json"],
        # the QEMU test guest's sources, built at first use (pykvmdirty/qemu/firmware.py)
        "pykvmdirty.qemu": ["guest/*.S", "guest/*.c", "guest/*.ld"],
    },
    python_requires=">=3.9",
    setup_requires=["cffi>=1.15"],
    cffi_modules=["pykvmdirty/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtAndLibrary},
    install_requires=["cffi>=1.15", "numpy>=2.0", "tqdm>=4.60"],
    extras_require={
        # `pykvmdirty compare/sweep --plot`
        "plot": ["matplotlib>=3.5"],
        # `pykvmdirty sweep --dask tcp://HOST:PORT`
        "dask": ["dask[distributed]>=2022.1"],
        # `pykvmdirty qemu` and pykvmdirty.qemu (real QEMU migrations over QMP)
        "qemu": ["qemu.qmp>=0.0.3"],
        # tests/test_compare.py (plot), tests/test_sweep.py (Dask LocalCluster),
        # tests/test_qemu_runner.py (qemu.qmp), and the lint/type checks .ci/run
        # runs (ruff, mypy)
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "matplotlib>=3.5",
                 "dask[distributed]>=2022.1", "qemu.qmp>=0.0.3", "ruff>=0.4", "mypy>=1.8"],
    },
    entry_points={"console_scripts": [
        "pykvmdirty=pykvmdirty.cli:main",
        "pykvmdirty-config=pykvmdirty.pkgconfig:main",
    ]},
    zip_safe=False,
)
