"""The C core's layers stay acyclic, and its comments name files that exist.

Two graphs over csrc/, both at file level:
 - includes: a quoted #include resolved as the compiler does (the including
   file's folder, then csrc/, then csrc/include/);
 - calls (any link-time reference): the objects of every file of
   csrc/sources.mk, built into a temporary folder with csrc/Makefile, read
   with `nm`: file A -> file B when A's object leaves undefined a symbol B's
   object defines.
Neither may have a circle (the public umbrella header excepted, see
UMBRELLA), and calls go down csrc/sources.mk's layers. A file path written in
a comment of csrc/ or tests/c/ must exist (Linux source paths excepted: they
name the kernel's tree, not ours).
"""
import os
import re
import shutil
import subprocess

import pytest
from conftest import strongly_connected

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
BUILD_OUT = ("build",)  # csrc/build: the Makefile's output, not source


def c_files(top, exts=(".c", ".h")):
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if os.path.relpath(os.path.join(d, x), CSRC)
                         not in BUILD_OUT)
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(exts)]
    return out


def rel(path):
    return os.path.relpath(path, CSRC)


def describe(graph, comps):
    lines = []
    for comp in comps:
        lines.append(" <-> ".join(comp))
        for a in comp:
            for b in sorted(graph.get(a, ())):
                if b in comp:
                    lines.append("    %s -> %s" % (a, b))
    return "\n".join(lines)


# ---- includes ----

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def include_graph():
    graph = {}
    for path in c_files(CSRC):
        edges = graph.setdefault(rel(path), set())
        for name in INCLUDE.findall(open(path).read()):
            for base in (os.path.dirname(path), CSRC, os.path.join(CSRC, "include")):
                target = os.path.normpath(os.path.join(base, name))
                if os.path.exists(target):
                    edges.add(rel(target))
                    break
            else:
                raise AssertionError("%s: #include \"%s\" names no file" % (rel(path), name))
    return graph


def test_include_graph_has_no_circle():
    """No circle, the public headers' included: kvmdirty.h, the umbrella C
    users include, includes kvmdirty/vm.h and kvmdirty/migrate.h, which
    includes vm.h; nothing includes the umbrella back."""
    graph = include_graph()
    assert graph["include/kvmdirty.h"] == {"include/kvmdirty/vm.h",
                                           "include/kvmdirty/migrate.h"}
    assert graph["include/kvmdirty/migrate.h"] == {"include/kvmdirty/vm.h"}
    assert "core/internal.h" in graph and graph["core/backend.h"]
    comps = strongly_connected(graph)
    assert not comps, "include circles:\n" + describe(graph, comps)


def test_the_vm_layers_see_the_vm_api_only():
    """core/, emu/, vm/ and real/ include, directly or not, the VM API
    (kvmdirty/vm.h) and never the migration side built on it
    (kvmdirty/migrate.h, or the umbrella that includes it)."""
    graph = include_graph()

    def reach(f, seen):
        for e in graph.get(f, ()):
            if e not in seen:
                seen.add(e)
                reach(e, seen)
        return seen
    for f in graph:
        if f.startswith(("core/", "emu/", "vm/", "real/")):
            above = reach(f, set()) & {"include/kvmdirty.h", "include/kvmdirty/migrate.h"}
            assert not above, "%s includes %s" % (f, sorted(above))


def test_core_includes_nothing_above_it():
    """core/ is the bottom layer: its files include core/ and the public
    headers only."""
    for f, edges in include_graph().items():
        if f.startswith("core/"):
            above = sorted(e for e in edges if not e.startswith(("core/", "include/")))
            assert not above, "%s includes %s" % (f, above)


# ---- calls (link-time references between objects) ----

def nm_symbols(obj):
    out = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDRBVWG" and parts[1].isupper():
            defined.add(parts[2])
    return defined, undefined


@pytest.fixture(scope="module")
def call_graph(tmp_path_factory):
    if not (shutil.which("make") and shutil.which("nm")
            and (shutil.which("cc") or shutil.which("gcc"))):
        pytest.skip("needs make, nm and a C compiler")
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "kd_build_script", os.path.join(ROOT, "pykvmdirty", "_build.py"))
    _build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_build)
    build = tmp_path_factory.mktemp("objs")
    objs = [str(build / s.replace(".c", ".o")) for s in _build.SOURCES]
    # -O0: the references are the same, the build quicker
    subprocess.run(["make", "-s", "-C", CSRC, "BUILD=" + str(build), "CFLAGS=-O0", "-j2"]
                   + objs, check=True, capture_output=True, text=True)
    symbols = {src: nm_symbols(obj) for src, obj in zip(_build.SOURCES, objs)}
    owner = {}
    for src, (defined, _) in symbols.items():
        for sym in defined:
            assert sym not in owner, "%s defined in %s and %s" % (sym, owner[sym], src)
            owner[sym] = src
    graph = {src: {owner[u] for u in undefined if u in owner and owner[u] != src}
             for src, (_, undefined) in symbols.items()}
    return graph


def test_call_graph_has_no_circle(call_graph):
    assert call_graph["vm/vm.c"], "no reference found: is nm reading the objects?"
    comps = strongly_connected(call_graph)
    assert not comps, "file-level call circles:\n" + describe(call_graph, comps)


LAYERS = ["core", "emu", "real", "vm", "migrate"]  # csrc/sources.mk, bottom up


def test_calls_go_down_the_layers(call_graph):
    """A file calls its own layer or those below it (csrc/sources.mk); emu
    and real are siblings that never call each other."""
    bad = []
    for a, edges in call_graph.items():
        la = LAYERS.index(a.split("/")[0])
        for b in edges:
            lb = LAYERS.index(b.split("/")[0])
            if lb > la or {a.split("/")[0], b.split("/")[0]} == {"emu", "real"}:
                bad.append("%s -> %s" % (a, b))
    assert not bad, "upward calls:\n" + "\n".join(sorted(bad))


# ---- file names in comments ----

COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
PATHLIKE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:c|h|py|mk|in|md|rst|S|supp))\b")
# Paths in Linux's source tree (a comment citing where KVM or uffd does it).
LINUX_TREE = ("virt/", "arch/", "Documentation/", "include/uapi/", "include/linux/",
              "mm/", "fs/", "tools/", "linux/", "asm/", "uapi/")
# System headers a comment may name.
SYSTEM = {"pthread.h", "immintrin.h", "sys/mman.h", "stdint.h", "signal.h", "sched.h"}


def comment_paths(path):
    text = open(path).read()
    for m in COMMENT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for p in PATHLIKE.findall(m.group(0)):
            yield line, p


def repo_basenames():
    names = set()
    for _d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith((".", "build", "__"))
                   and not x.endswith(".egg-info")]
        names.update(files)
    return names


def resolves(name, path, basenames):
    """Whether a file named in a comment of `path` exists: as written from
    the file's folder, csrc/, csrc/include/ or the repository root, or, for a
    bare name, as a file of that name anywhere in the repository ("_ops.c",
    a suffix, as the end of one). A capitalised NAME is a placeholder."""
    if name.startswith(LINUX_TREE) or name in SYSTEM or "NAME" in name:
        return True
    for base in (os.path.dirname(path), CSRC, os.path.join(CSRC, "include"), ROOT):
        if os.path.exists(os.path.join(base, name)):
            return True
    if "/" not in name:
        if name.startswith("_"):
            return any(b.endswith(name) for b in basenames)
        return name in basenames
    return False


def test_comments_name_files_that_exist():
    basenames = repo_basenames()
    missing = []
    for path in c_files(CSRC) + c_files(os.path.join(HERE, "c")) + \
            [os.path.join(CSRC, f) for f in ("Makefile", "sources.mk", "build.mk")]:
        text_paths = comment_paths(path) if path.endswith((".c", ".h")) else \
            ((i + 1, p) for i, line in enumerate(open(path)) if line.lstrip().startswith("#")
             for p in PATHLIKE.findall(line))
        for line, name in text_paths:
            if not resolves(name, path, basenames):
                missing.append("%s:%d: %s" % (os.path.relpath(path, ROOT), line, name))
    assert not missing, "comments name files that do not exist:\n" + "\n".join(missing)
