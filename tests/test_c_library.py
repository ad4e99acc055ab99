"""libkvmdirty for C programs: the installed library, header and flags work
from C and C++, export only the public API, and agree with the Python API."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pykvmdirty as kd
from pykvmdirty import pkgconfig

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "examples", "two_writers.c")
LIB = os.path.join(pkgconfig.lib_dir(), "libkvmdirty.so")

LIB_MISSING = pytest.mark.skipif(
    not os.path.exists(LIB),
    reason="libkvmdirty is built by `pip install .` (not by an in-place cffi build): "
    "%s is missing" % LIB)


def compiler(cxx=False):
    name = "c++" if cxx else "cc"
    path = shutil.which(name) or shutil.which("g++" if cxx else "gcc")
    if not path:
        pytest.skip("no %s compiler on PATH" % name)
    return path


def build(src, out, cxx=False, extra=()):
    cmd = [compiler(cxx)] + (["-x", "c++"] if cxx else ["-std=gnu11"]) + [
        "-O2", "-Wall", "-Wextra", "-Werror", src, "-o", out] + list(extra) + \
        pkgconfig.cflags().split() + pkgconfig.libs().split()
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def run_config(*args):
    return subprocess.run(["pykvmdirty-config", *args], capture_output=True, text=True,
                          check=True).stdout.split()


def splitmix64(state, n):
    """The example's generator, vectorised: n values from `state`."""
    with np.errstate(over="ignore"):
        z = np.uint64(state) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@LIB_MISSING
@pytest.mark.parametrize("cxx", [False, True], ids=["c", "c++"])
def test_example_matches_python(tmp_path, cxx):
    exe = str(tmp_path / "two_writers")
    build(EXAMPLE, exe, cxx=cxx)
    npages, per_thread, seed = 65536, 20000, 7
    out = subprocess.run([exe, str(npages), str(per_thread), str(seed)], check=True,
                         capture_output=True, text=True).stdout
    lines = out.splitlines()
    assert lines[1].split() == ["#", "backend", "pages_found", "gfn_sum", "collects",
                                "us_per_collect"], lines[1]   # labelled columns
    rows = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith("#")}
    widths = {len(line) for line in lines[1:]}
    assert len(widths) == 1, lines   # the columns line up under their labels
    # the same gfns through the Python API
    gfns = np.concatenate([splitmix64(seed, per_thread), splitmix64(seed + 1, per_thread)])
    gfns %= np.uint64(npages)
    vm = kd.VM("flat")
    vm.set_user_memory_region(0, 0, npages << 12, kd.MEM_LOG_DIRTY_PAGES)
    vm.write(gfns)
    got = vm.collect(0)
    assert set(rows) == {"flat", "twolevel"}
    for name, (found, total, collects, _us) in rows.items():
        assert int(found) == got.size, name
        assert int(total) == int(got.sum()), name
        assert int(collects) == 51


@LIB_MISSING
def test_config_flags_and_pkgconfig(tmp_path):
    assert run_config("--cflags") == [pkgconfig.cflags()]
    assert "-lkvmdirty" in run_config("--libs")
    pc = os.path.join(pkgconfig.pkgconfig_dir(), "kvmdirty.pc")
    text = open(pc).read()
    assert "Version: %s" % kd.__version__ in text and "-lkvmdirty" in text
    if shutil.which("pkg-config"):
        env = dict(os.environ, PKG_CONFIG_PATH=pkgconfig.pkgconfig_dir())
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "kvmdirty"], env=env,
                               capture_output=True, text=True, check=True).stdout
        assert "-lkvmdirty" in flags
    # python -m pykvmdirty.pkgconfig gives the same answer
    import sys
    out = subprocess.run([sys.executable, "-m", "pykvmdirty.pkgconfig", "--cflags"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [pkgconfig.cflags()]


PUBLIC_HEADERS = (os.path.join("kvmdirty", "vm.h"), os.path.join("kvmdirty", "migrate.h"))


def public_functions():
    """KD_API functions of the installed headers (the two kvmdirty.h includes)."""
    names = set()
    for h in PUBLIC_HEADERS:
        header = open(os.path.join(pkgconfig.include_dir(), h)).read()
        names |= set(re.findall(r"KD_API\s+[^;(]*?\b(kd_\w+)\s*\(", header))
    return names


def test_headers_split_between_vm_api_and_migration():
    """kvmdirty/vm.h holds the VM API; kvmdirty/migrate.h, built on it, the
    send path, wire format, workloads and thread pools; kvmdirty.h, the one
    file C users include, includes both and declares nothing itself."""
    inc = os.path.join(ROOT, "csrc", "include")
    text = {h: open(os.path.join(inc, h)).read() for h in PUBLIC_HEADERS}
    declared = {h: set(re.findall(r"KD_API\s+[^;(]*?\b(kd_\w+)\s*\(", s))
                for h, s in text.items()}
    vm, mig = (declared[h] for h in PUBLIC_HEADERS)
    umbrella = open(os.path.join(inc, "kvmdirty.h")).read()
    assert '#include "kvmdirty/vm.h"' in umbrella
    assert '#include "kvmdirty/migrate.h"' in umbrella and "KD_API" not in umbrella
    assert '#include "kvmdirty/vm.h"' in text[PUBLIC_HEADERS[1]]
    assert not vm & mig
    assert {"kd_vm_create", "kd_collect", "kd_vm_hold"} <= vm
    assert {"kd_writers_start", "kd_sender_create", "kd_wire_dest_feed",
            "kd_workload_threads_start"} <= mig


@LIB_MISSING
def test_exports_only_the_public_api():
    nm = shutil.which("nm")
    if not nm:
        pytest.skip("nm (binutils) not on PATH")
    out = subprocess.run([nm, "-D", "--defined-only", LIB], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines()
                if line.split() and line.split()[1] in "TDBRW" and not line.split()[-1].startswith("_")}
    public = public_functions()
    assert public, "no KD_API functions found in the header"
    assert exported == public, (exported - public, public - exported)


@LIB_MISSING
def test_static_library_links(tmp_path):
    exe = str(tmp_path / "bad_input_static")
    src = os.path.join(HERE, "c", "test_bad_input.c")
    cmd = [compiler(), "-std=gnu11", "-O1", src, "-o", exe] + pkgconfig.cflags().split() + \
        pkgconfig.libs(static=True).split()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = subprocess.run([exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert re.search(r"^\d+ passed, 0 failed$", r.stdout, flags=re.M)


@LIB_MISSING
def test_c_bad_input_table(tmp_path):
    """The C-level bad-input table; CI runs it again against the sanitizer build."""
    exe = str(tmp_path / "bad_input")
    build(os.path.join(HERE, "c", "test_bad_input.c"), exe)
    r = subprocess.run([exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, 0 failed$", r.stdout, flags=re.M)
    assert m and int(m.group(1)) > 40


@LIB_MISSING
def test_concurrent_api_c_program(tmp_path):
    """Stats reset under a running writer; memslot calls refused (-EBUSY)
    while a writer pool or workload threads run, allowed after join/stop;
    kd_vm_hold/kd_vm_release. CI runs it again against the sanitizer build."""
    exe = str(tmp_path / "concurrent_api")
    build(os.path.join(HERE, "c", "test_concurrent_api.c"), exe)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, 0 failed$", r.stdout, flags=re.M)
    assert m and int(m.group(1)) >= 38


# The real-kernel backends' own C tests (built from csrc/ directly: they test
# internal modules, not the installed library): the test program and every
# file of the backend's folder but its ops table (which needs the core).
# Exit 77 means "unavailable".
BACKEND_C_TESTS = {
    "kvm": ("tests/c/test_kvm_backend.c", "csrc/real/kvm"),
    "uffd": ("tests/c/test_uffd_backend.c", "csrc/real/uffd"),
}


def backend_sources(backend):
    test, folder = BACKEND_C_TESTS[backend]
    d = os.path.join(ROOT, folder)
    mods = sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.endswith(".c") and not f.endswith("_ops.c"))
    return [os.path.join(ROOT, test)] + mods, d


@pytest.mark.parametrize("backend", sorted(BACKEND_C_TESTS))
def test_backend_c_program(tmp_path, backend):
    ok, why = kd.backend_available(backend)
    if not ok:
        pytest.skip("%s backend unavailable here: %s" % (backend, why))
    exe = str(tmp_path / ("test_" + backend))
    srcs, folder = backend_sources(backend)
    subprocess.run([compiler(), "-O2", "-std=gnu11", "-pthread", "-Wall", "-Wextra",
                    "-I" + os.path.join(ROOT, "csrc", "include"), "-I" + folder]
                   + srcs + ["-o", exe], check=True, capture_output=True, text=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "skipped")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_build_flags_and_pc_template_defined_once():
    """csrc/build.mk holds the compiler flags and csrc/kvmdirty.pc.in the
    pkg-config template; the Makefile, _build.py and setup.py only read them."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "kd_build_script", os.path.join(ROOT, "pykvmdirty", "_build.py"))
    _build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_build)  # the checkout's script, not an installed copy
    for f in ("csrc/Makefile", "setup.py", "pykvmdirty/_build.py"):
        text = open(os.path.join(ROOT, f)).read()
        assert "-std=gnu11" not in text and "-fsanitize=" not in text, f
        assert "Libs.private" not in text, f
    assert "-std=gnu11" in _build.CFLAGS and "-fvisibility=hidden" in _build.CFLAGS
    pc = _build.pc_text("/opt/x", "9.9")
    assert "prefix=/opt/x" in pc and "Version: 9.9" in pc and "@" not in pc


@pytest.mark.skipif(not shutil.which("make"), reason="make not on PATH")
def test_makefile_tracks_header_dependencies(tmp_path):
    """An object is rebuilt when any header it includes changes (-MMD -MP),
    and only then."""
    csrc = os.path.join(ROOT, "csrc")
    obj = str(tmp_path / "real" / "kvm" / "kvm_run.o")
    subprocess.run(["make", "-s", "-C", csrc, "BUILD=" + str(tmp_path), obj], check=True,
                   capture_output=True, text=True)

    def would_rebuild(header):
        out = subprocess.run(["make", "-n", "-C", csrc, "BUILD=" + str(tmp_path),
                              "-W", header, obj], check=True, capture_output=True,
                             text=True).stdout
        return "kvm_run.c" in out

    # the migration side's headers are above the backend's
    for header in ("migrate/simd.h", "include/kvmdirty.h", "include/kvmdirty/migrate.h"):
        assert not would_rebuild(header), header
    for header in ("real/kvm/kvm_backend.h", "real/kvm/kvm_internal.h", "include/kvmdirty/vm.h"):
        assert would_rebuild(header), header
