"""The package layout (issue 11, item 6): sub-packages in the direction data flows, no import cycle,
and the flat module names of before the layout still importable as the very same modules.

Parts, lowest first; a module may import only its own part or a lower one:

  0  mkmsr (the package), errors, fsutil, tables    shared leaves
  1  mkmsr.data                                     raw formats -> prepared artifact -> batches
  2  mkmsr.models                                   the model registry
  3  mkmsr.checkpoint                               a trained model on disk (models + data spec)
  4  mkmsr.training | mkmsr.serving                 peers: neither imports the other
  5  mkmsr.cli, mkmsr.demo, mkmsr.__main__          applications: no library module imports them
"""
import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import mkmsr

SRC = Path(mkmsr.__file__).parent
ROOT = SRC.parent.parent

LAYER = {"mkmsr": 0, "errors": 0, "fsutil": 0, "tables": 0, "data": 1, "models": 2, "checkpoint": 3,
         "training": 4, "serving": 4, "apps": 5}
# the applications, each importing only those before it: cli runs the demo, __main__ runs cli
APPS = ["mkmsr.demo", "mkmsr.cli", "mkmsr.__main__"]


def module_names() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_names()


def part(module: str) -> str:
    """'mkmsr.data.prepare' -> 'data'; 'mkmsr' -> 'mkmsr'; 'mkmsr.cli' -> 'apps'."""
    if module in APPS:
        return "apps"
    return module.split(".")[1] if "." in module else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported mkmsr module, line, lazy) for every import in ``module``; lazy = inside a function.
    Imports under ``if TYPE_CHECKING:`` are left out (never executed)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy = True
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mkmsr" or alias.name.startswith("mkmsr."):
                    found.append((alias.name, node.lineno, lazy))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "mkmsr" or name.startswith("mkmsr."):
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{name}.{alias.name}"
                    found.append((sub if sub in MODULES or sub.partition(".")[2] in mkmsr.MOVED else name,
                                  node.lineno, lazy))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


EDGES = {m: imports(m) for m in MODULES}


def test_every_module_is_in_a_part():
    unknown = sorted(m for m in MODULES if part(m) not in LAYER)
    assert not unknown, f"modules outside the layout's parts (add them to LAYER in this test): {unknown}"


def test_the_library_imports_modules_by_their_place_not_by_the_old_flat_names():
    old = [f"{m}:{line} imports {t}" for m, edges in EDGES.items() for t, line, _ in edges
           if t.partition(".")[2] in mkmsr.MOVED]
    assert not old, "use the new paths (mkmsr.MOVED maps old -> new):\n" + "\n".join(old)


def test_imports_go_down_the_layers():
    """Every import (lazy ones included, TYPE_CHECKING ones not) goes to the module's own part or
    a lower layer: data never imports models / training / serving, training and serving never
    import each other, and nothing in the library imports cli, demo or __main__."""
    bad = []
    for m, edges in EDGES.items():
        for t, line, _ in edges:
            if t not in MODULES:
                bad.append(f"{m}:{line} imports {t}, which is no module of the package")
                continue
            a, b = part(m), part(t)
            if a != b and LAYER[b] >= LAYER[a]:
                bad.append(f"{m}:{line} ({a}, layer {LAYER[a]}) imports {t} ({b}, layer {LAYER[b]})")
    assert not bad, "\n".join(bad)


def test_no_library_module_imports_the_applications():
    bad = [f"{m}:{line} imports {t}" for m, edges in EDGES.items() if m not in APPS
           for t, line, _ in edges if t in APPS]
    assert not bad, "\n".join(bad)
    # among themselves: cli runs the demo, never the other way round
    back = [f"{m}:{line} imports {t}" for m in APPS for t, line, _ in EDGES[m]
            if t in APPS and APPS.index(t) >= APPS.index(m)]
    assert not back, "\n".join(back)


def test_no_import_cycle_at_module_level():
    """Module-level imports (the ones that run on import) form no cycle, between modules or parts."""
    graph = {m: sorted({t for t, _, lazy in edges if not lazy and t in MODULES and t != m})
             for m, edges in EDGES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                cycle = dfs(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = dfs(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)
    parts = {(part(m), part(t)) for m, ts in graph.items() for t in ts if part(m) != part(t)}
    both = sorted((a, b) for a, b in parts if (b, a) in parts and a < b)
    assert not both, f"parts importing each other: {both}"


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(mkmsr.__path__, "mkmsr.")]
    assert set(names) | {"mkmsr"} == set(MODULES)
    for name in names:
        importlib.import_module(name)


# --------------------------------------------------------------------------------------------
# the flat names of before the layout
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old", sorted(mkmsr.MOVED))
def test_old_module_path_is_the_new_module(old):
    new = importlib.import_module(f"mkmsr.{mkmsr.MOVED[old]}")
    mod = importlib.import_module(f"mkmsr.{old}")
    assert mod is new
    assert sys.modules[f"mkmsr.{old}"] is new and getattr(mkmsr, old) is new
    assert new.__name__ == new.__spec__.name == f"mkmsr.{mkmsr.MOVED[old]}"  # the alias leaves no trace on it
    assert not (SRC / f"{old}.py").exists(), f"src/mkmsr/{old}.py would shadow the alias"


def test_old_paths_give_the_same_objects_and_share_monkeypatches(monkeypatch):
    from mkmsr.recommend import Recommender as OldRecommender
    from mkmsr.serving.recommend import Recommender
    from mkmsr.train import Trainer as OldTrainer
    from mkmsr.training.train import Trainer
    import mkmsr.prepare as old_prepare
    import mkmsr.data.prepare as new_prepare

    assert OldRecommender is Recommender and OldTrainer is Trainer
    monkeypatch.setattr("mkmsr.prepare.FORMAT_VERSION", -1)
    assert new_prepare.FORMAT_VERSION == -1 and old_prepare is new_prepare


def test_an_unknown_flat_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mkmsr.no_such_module")


NOT_MODULES = {"mkmsr.access"}  # logger names the docs mention


def _doc_references() -> list[tuple[str, str]]:
    """Python imports and dotted names ``mkmsr.x.y`` in the README and docs/*.md."""
    refs = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not doc.exists():
            continue
        text = doc.read_text(encoding="utf-8")
        for stmt in re.findall(r"^\s*((?:from mkmsr[\w.]* import [\w, ]+)|(?:import mkmsr[\w.]*))\s*$", text, re.M):
            refs.append((doc.name, stmt.strip()))
        for name in re.findall(r"\bmkmsr(?:\.[A-Za-z_]\w*)+", text):
            if not name.endswith(".py") and name not in NOT_MODULES:
                refs.append((doc.name, name))
    return sorted(set(refs))


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="no source checkout")
def test_imports_and_names_in_the_readme_and_docs_resolve():
    refs = _doc_references()
    assert any(r.startswith("from mkmsr.recommend import") for _, r in refs)  # the README's Python example
    bad = []
    for doc, ref in refs:
        try:
            if ref.startswith(("from ", "import ")):
                exec(ref, {})
                continue
            parts = ref.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except Exception as exc:  # noqa: BLE001 - reported with the reference
            bad.append(f"{doc}: {ref}: {exc!r}")
    assert not bad, "\n".join(bad)
