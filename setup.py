"""pykvmdirty: a dirty-page-tracking kernel-interface emulator (C core via cffi)."""
from setuptools import find_packages, setup

setup(
    name="pykvmdirty",
    version="0.1.0",
    description="Dirty-page-tracking KVM interface emulator: flat, two-level, byte-map, "
    "ring and real /dev/kvm dirty logs, and a live-migration scan-and-send loop",
    packages=find_packages(include=["pykvmdirty", "pykvmdirty.*"]),
    python_requires=">=3.9",
    setup_requires=["cffi>=1.15"],
    cffi_modules=["pykvmdirty/_build.py:ffibuilder"],
    install_requires=["cffi>=1.15", "numpy>=1.22"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["pykvmdirty=pykvmdirty.cli:main"]},
    zip_safe=False,
)
