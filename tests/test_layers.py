"""The package's layers import downward only, and no module imports itself
back through others (README, "Layout").

Every module under pykvmdirty/ is parsed (ast, no import runs); every
import counts, the ones inside functions too: a lazy import still ties the
two modules together. The layers, lowest first:

    leaf       units, errors, the cffi extension
    bindings   bindings/ (the only code that touches the extension)
    models     costmodel, limits (priced events, memory estimates)
    migration  migration/
    api        pykvmdirty/__init__.py (the public names)
    analysis   analysis/
    qemu       qemu/ (real QEMU runs, compared with the emulator)
    commands   commands/, cli, __main__, pkgconfig

A module may import its own layer and the layers below it. Commands are
siblings: one command imports only the shared helpers (``commands/_*.py``),
never another command.
"""
import ast
import os

import pytest
from conftest import strongly_connected

PKG = "pykvmdirty"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, PKG)

LAYERS = [
    ("leaf", ["pykvmdirty.units", "pykvmdirty.errors", "pykvmdirty._native",
              "pykvmdirty._build"]),
    ("bindings", ["pykvmdirty.bindings"]),
    ("models", ["pykvmdirty.costmodel", "pykvmdirty.limits"]),
    ("migration", ["pykvmdirty.migration"]),
    ("api", ["pykvmdirty"]),
    ("analysis", ["pykvmdirty.analysis"]),
    ("qemu", ["pykvmdirty.qemu"]),
    ("commands", ["pykvmdirty.commands", "pykvmdirty.cli", "pykvmdirty.__main__",
                  "pykvmdirty.pkgconfig"]),
]


def _modules():
    """{module name: path} of every .py file of the package."""
    out = {}
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"):
                rel = rel[:-len(".__init__")]
            out[rel] = path
    return out


MODULES = _modules()


def layer_of(name):
    """(index, layer name) of a module: its longest matching prefix. The
    package itself ("pykvmdirty") matches only its __init__."""
    best = None
    for i, (layer, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if name == p or (p != PKG and name.startswith(p + ".")):
                if best is None or len(p) > best[2]:
                    best = (i, layer, len(p))
    if best is None:
        raise AssertionError("module %s is in no layer: add it to tests/test_layers.py"
                             % name)
    return best[0], best[1]


def imports(name, path):
    """[(imported module, line)] of the package's own modules that `name`
    imports anywhere in its file (module level or inside functions)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_pkg = os.path.basename(path) == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    out.append((a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod != PKG and not mod.startswith(PKG + "."):
                continue
            for a in node.names:  # `from . import x`: x is a module
                sub = mod + "." + a.name
                out.append((sub if sub in MODULES else mod, node.lineno))
    return [(m, line) for m, line in out if m != name]


def graph():
    return {name: imports(name, path) for name, path in MODULES.items()}


def _rel(name):
    return os.path.relpath(MODULES[name], os.path.dirname(ROOT)) if name in MODULES else name


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_go_downward_only():
    bad = []
    for name, deps in sorted(graph().items()):
        i, layer = layer_of(name)
        for dep, line in deps:
            j, dep_layer = layer_of(dep)
            if j > i:
                bad.append("%s:%d (%s) imports %s (%s, a higher layer)"
                           % (_rel(name), line, layer, dep, dep_layer))
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_commands_do_not_import_each_other():
    bad = []
    for name, deps in sorted(graph().items()):
        if not name.startswith("pykvmdirty.commands."):
            continue
        for dep, line in deps:
            if (dep.startswith("pykvmdirty.commands.")
                    and not dep.rsplit(".", 1)[1].startswith("_")):
                bad.append("%s:%d imports the command %s (share code through "
                           "commands/_*.py)" % (_rel(name), line, dep))
    assert not bad, "\n  ".join(["commands importing commands:"] + bad)


def cycles(g):
    """The import circles of g: strongly connected components of more than
    one module, each as a sorted list."""
    return strongly_connected({v: {d for d, _ in deps if d in g and d != v}
                               for v, deps in g.items()})


def test_no_import_circles():
    g = graph()
    found = cycles(g)
    lines = []
    for comp in found:
        members = set(comp)
        edges = ["%s -> %s (line %d)" % (_rel(a), b, line)
                 for a in comp for b, line in g[a] if b in members]
        lines.append("circle of %d modules:\n    %s" % (len(comp), "\n    ".join(edges)))
    assert not found, "\n  ".join(["import circles:"] + lines)


@pytest.mark.parametrize("g, expect", [
    ({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}, [["a", "b", "c"]]),
    ({"a": [("b", 1)], "b": []}, []),
])
def test_cycle_finder(g, expect):
    assert cycles(g) == expect


def test_layer_of_examples():
    assert layer_of("pykvmdirty")[1] == "api"
    assert layer_of("pykvmdirty.units")[1] == "leaf"
    assert layer_of("pykvmdirty.bindings.vm")[1] == "bindings"
    assert layer_of("pykvmdirty.migration.config")[1] == "migration"
    assert layer_of("pykvmdirty.commands.migrate")[1] == "commands"
