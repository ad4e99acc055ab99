"""Every file a comment, a docstring or the README names exists.

A reference is a path-like word ending in one of the repository's file
extensions: ``migration/sinks.py``, ``csrc/core/bitmap.c``,
``tests/test_wire.py``, ``cost_model.json``. Where it is looked for:

- with a directory (``bindings/sender.py``): a repository file whose path
  ends with it (``pykvmdirty/bindings/sender.py``);
- a bare name (``limits.py``, ``hier_log.c``): a file of that name anywhere
  in the repository (one starting with "_", ``_ops.c``, is a suffix: the
  end of some file's name).

Names of other projects' files (Linux's ``virt/kvm/kvm_main.c``, QEMU's
``migration/ram.c``) are not ours: a reference counts only when its first
directory is one of this repository's (EXTERNAL lists the known others).
"""
import ast
import io
import os
import re
import tokenize

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
SKIP_DIRS = {".git", "__pycache__", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             "node_modules", ".eggs"}
EXTS = ("py", "c", "h", "md", "json", "toml", "mk", "S", "ld", "in", "txt", "sh", "supp")
REF = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:%s))(?![\w/])" % "|".join(EXTS))

#: other projects' files the sources cite (Linux, QEMU, glibc, the kernel docs)
EXTERNAL = re.compile(
    r"^(virt|arch|include/linux|include/uapi|Documentation|tools|mm|kernel|fs|lib|"
    r"softmmu|system|accel|hw|util|linux-headers|migration/(ram|migration|dirtyrate|"
    r"savevm|qemu-file|multifd|ram-compress|cpu-throttle|options)\.[ch])(/|$)"
    r"|^(ram|migration|kvm-all|dirtyrate|cpu-throttle|kvm_main|dirty_ring|mmu|"
    r"dirty_log_test|qemu-file|savevm|multifd|physmem|memory|cpus|userfaultfd|"
    r"kvm_dirty_ring|pgtable|mprotect|memory_hotplug|x86|tdp_mmu|spte|page_track|"
    r"kvm_host|kvm|vmx|pml|fault|huge_memory|mincore|madvise|syscall|setup|arch_init)\.[ch]$")
#: names the text uses as examples of a user's own file (README's new backend: mylog.c)
PLACEHOLDERS = {"prog.c", "calibration.json", "mylog.c"}


def repo_files():
    out = []
    for d, dirs, files in os.walk(REPO):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info"))
        for f in files:
            out.append(os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/"))
    return out


FILES = repo_files()
BASENAMES = {p.rsplit("/", 1)[-1] for p in FILES}
TOP_DIRS = {p.split("/", 1)[0] for p in FILES if "/" in p}
# every directory name of ours (bindings, migration, core, emu, ...): a
# reference whose first part is one of them is a reference to our tree
OUR_DIRS = {part for p in FILES for part in p.split("/")[:-1]}


def exists(ref, where):
    """Does `ref`, named in file `where` (repo-relative), name a file of ours?"""
    ref = ref.lstrip("./")
    if "/" in ref:
        return ref in FILES or any(p.endswith("/" + ref) for p in FILES)
    if ref.startswith("_"):  # a suffix ("_ops.c"): the end of some file's name
        return any(b.endswith(ref) for b in BASENAMES)
    return ref in BASENAMES


def is_ours(ref):
    ref = ref.lstrip("./")
    if EXTERNAL.search(ref) or ref.rsplit("/", 1)[-1] in PLACEHOLDERS:
        return False
    if "/" in ref:
        return ref.split("/", 1)[0] in OUR_DIRS or ref.split("/", 1)[0] in TOP_DIRS
    return True


def python_texts(path):
    """(line, text) of every comment and docstring of a Python file."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.append((body[0].lineno, body[0].value.value))
    return out


def references():
    """[(file, line, reference)] of every path-like reference in the
    package's, the tests' and the benchmarks' comments and docstrings, and
    in README.md."""
    found = []
    for rel in FILES:
        top = rel.split("/", 1)[0]
        if not rel.endswith(".py") or top not in ("pykvmdirty", "tests", "bench", "examples"):
            continue
        for line, text in python_texts(os.path.join(REPO, rel)):
            for m in REF.finditer(text):
                found.append((rel, line + text[:m.start()].count("\n"), m.group(1)))
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            for m in REF.finditer(text):
                found.append(("README.md", n, m.group(1)))
    return found


def test_referenced_files_exist():
    missing = ["%s:%d names %s" % (where, line, ref) for where, line, ref in references()
               if is_ours(ref) and not exists(ref, where)]
    assert not missing, ("references to files that do not exist (fix the name, or add "
                         "another project's file to EXTERNAL):\n  " + "\n  ".join(missing))


def test_the_checker_sees_references():
    assert exists("bindings/sender.py", "pykvmdirty/migration/controller.py")
    assert not exists("migration/sender.py", "pykvmdirty/migration/controller.py")
    assert not exists("tcp_protocol_v0.py", "pykvmdirty/migration/receiver.py")
    assert exists("limits.py", "pykvmdirty/migration/trace.py")
    assert not is_ours("virt/kvm/kvm_main.c") and not is_ours("migration/ram.c")
    refs = {r for _, _, r in references()}
    assert "csrc/include/kvmdirty.h" in refs or any(r.endswith("kvmdirty.h") for r in refs)
