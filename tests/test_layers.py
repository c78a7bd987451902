"""The package is a stack of layers (docs/architecture.md): a file imports only from its own
layer or those below, and no two files import each other, directly or through others. This
reads the imports of every file (ast; nothing is imported or run)."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "contrastlab"

# the layer of each top-level name under contrastlab (a folder or a module), bottom first; a file
# imports from its own layer's name or from lower layers only. nn, losses and data are side by
# side and import none of each other; config composes a recipe from the typed options of data,
# networks and methods, so it sits above methods.
LAYERS = [
    {"errors", "fields", "files", "distributed", "checkpoint", "attacks"},  # package-level primitives
    {"nn", "losses", "data"},  # networks and their parts, pure losses, data sets and views
    {"methods"},
    {"config"},
    {"eval"},
    {"engine"},
    {"report"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """contrastlab modules imported by ``path`` (relative imports resolved; ``from X import name``
    counts X.name when that is a module)."""
    mod = _module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("contrastlab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("contrastlab"):
                out.add(name)
                out |= {f"{name}.{a.name}" for a in node.names}
    return out


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
EDGES = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_name_has_a_layer():
    names = {_layer(m) for m in MODULES} - {""}
    assert names <= set(RANK), f"not placed in a layer (add it to LAYERS and docs/architecture.md): {names - set(RANK)}"


def test_no_import_against_the_layers():
    bad = []
    for m, targets in EDGES.items():
        a = _layer(m)
        for t in targets:
            b = _layer(t)
            if not a or not b or a == b:
                continue
            if RANK[b] > RANK[a] or (RANK[a] == RANK[b] == 1):  # upwards, or sideways among nn/losses/data
                bad.append(f"{m} -> {t}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one file (package __init__ faces left out)."""
    files = {m for m, p in MODULES.items() if p.name != "__init__.py"}
    graph = {m: {t for t in EDGES[m] if t in files} for m in files}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(files):
        if v not in index:
            visit(v)
    return out


def test_no_import_loop():
    assert not _cycles(), _cycles()


def test_nothing_imports_the_cli():
    users = [m for m, t in EDGES.items() if "contrastlab.cli" in t and m != "contrastlab.cli"]
    assert not users, users


@pytest.mark.parametrize("edge,expect", [
    (("contrastlab.losses.contrastive", "contrastlab.engine.trainer"), "against"),
    (("contrastlab.methods.simclr", "contrastlab.eval.knn"), "against"),
    (("contrastlab.eval.knn", "contrastlab.engine.trainer"), "against"),
    (("contrastlab.nn.queue", "contrastlab.data.views"), "against"),
    (("contrastlab.files", "contrastlab.config"), "against"),
])  # fmt: skip
def test_the_check_catches_a_planted_import(edge, expect, monkeypatch):
    """Negative control: a planted upward import fails the check."""
    src, dst = edge
    monkeypatch.setitem(EDGES, src, EDGES[src] | {dst})
    with pytest.raises(AssertionError, match="against the layers"):
        test_no_import_against_the_layers()


def test_the_check_catches_a_planted_loop(monkeypatch):
    monkeypatch.setitem(EDGES, "contrastlab.nn.momentum", EDGES["contrastlab.nn.momentum"] | {"contrastlab.nn.queue"})
    monkeypatch.setitem(EDGES, "contrastlab.nn.queue", EDGES["contrastlab.nn.queue"] | {"contrastlab.nn.momentum"})
    assert ["contrastlab.nn.momentum", "contrastlab.nn.queue"] in _cycles()
