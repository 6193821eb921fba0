"""The package's import graph keeps DESIGN.md's floors: no circle, no import from a lower
floor to a higher one; the audit's sections and the CLI's commands reach attacks and
defenses only through scenarios; no ``importlib`` hides a dependency.

The graph is read from the source (every ``import`` and ``from ... import``, inside
functions too; those under ``if TYPE_CHECKING:`` are never run and do not count), so the
test needs nothing outside this repository.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# DESIGN.md's floors, top to bottom: a module may import its own floor or any floor below
LAYERS = [
    ("face", ("dlsec.cli", "dlsec.commands")),
    ("audit", ("dlsec.audit",)),
    ("serve", ("dlsec.serve",)),
    ("scenarios", ("dlsec.scenarios",)),
    ("defenses", ("dlsec.defenses",)),
    ("attacks", ("dlsec.attacks",)),
    ("core", ("dlsec.training", "dlsec.threat", "dlsec.executor")),
    ("models", ("dlsec.models",)),
    ("data", ("dlsec.data",)),
    ("base", ("dlsec.errors", "dlsec.files", "dlsec")),
]

# front-ends that must go through scenarios, and what they may not import
FRONT_ENDS = ("dlsec.audit.sections", "dlsec.commands")
BELOW_SCENARIOS = ("dlsec.attacks", "dlsec.defenses")

# the only modules that may import a module by a name computed at run time
IMPORT_BY_NAME = {
    "dlsec.plugins": "imports the modules of the package a registry belongs to (audit "
                     "sections, defenses, commands)",
    "dlsec.models.registry": "a user's `module:factory` architecture, only with trust_code",
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that holds ``module``."""
    best, best_len = len(LAYERS), -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if _within(module, p) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "dlsec").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _run_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of ``tree`` except the body of ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if id(n) not in skip]


def imports_of(module: str, path: Path) -> set[str]:
    """The ``dlsec`` modules (and imported names, as ``module.name``) ``module`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _run_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if _within(m, "dlsec")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (its own parent packages left out)."""
    files = _modules()
    return {
        mod: {
            t for t in imports_of(mod, path)
            if t in files and t != mod and not mod.startswith(t + ".")
        }
        for mod, path in files.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_graph_is_read() -> None:
    files = _modules()
    assert {"dlsec.cli", "dlsec.threat", "dlsec.scenarios", "dlsec.attacks.core"} <= set(files)
    assert "dlsec.threat" in imports_of("dlsec.scenarios.context", files["dlsec.scenarios.context"])
    assert layer_of("dlsec.commands.train") < layer_of("dlsec.scenarios.hardening")
    assert layer_of("dlsec.threat") == layer_of("dlsec.training") < layer_of("dlsec.errors")


def test_circle_finder_finds_a_planted_circle() -> None:
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(planted) == [["a", "b", "c"]]


def test_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .options import count\n"
        "if TYPE_CHECKING:\n"
        "    from dlsec.defenses.adversarial import METHODS\n"
        "else:\n"
        "    import dlsec.files\n"
        "def run():\n"
        "    from dlsec.attacks.registry import make_attack\n"
    )
    assert imports_of("dlsec.commands.mod", path) == {
        "dlsec.commands.options", "dlsec.commands.options.count", "dlsec.files",
        "dlsec.attacks.registry", "dlsec.attacks.registry.make_attack",
    }
    assert _imports_by_name(path) == []
    path.write_text("import importlib\nm = importlib.import_module('dlsec.attacks')\n")
    assert _imports_by_name(path) == [2]


def test_no_circles(graph) -> None:
    assert _circles(graph) == []


def test_no_upward_imports(graph) -> None:
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer_of(b) < layer_of(a) and not a.startswith(b + ".")
    ]
    assert upward == []


def test_sections_and_commands_reach_attacks_and_defenses_only_through_scenarios() -> None:
    """Sections and commands translate options into a scenario call; building and running
    attacks or defenses is the scenarios' work (imports inside functions count)."""
    files = _modules()
    offending = sorted(
        f"{mod} imports {target}"
        for mod, path in files.items()
        if any(_within(mod, front) for front in FRONT_ENDS)
        for target in imports_of(mod, path)
        if target in files and any(_within(target, below) for below in BELOW_SCENARIOS)
    )
    assert offending == []


def _imports_by_name(path: Path) -> list[int]:
    """Lines of ``importlib.import_module(...)``, ``import_module(...)`` or ``__import__(...)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__"):
            lines.append(node.lineno)
    return lines


def test_no_importlib_hides_a_dependency() -> None:
    found = {mod: _imports_by_name(path) for mod, path in _modules().items()}
    found = {mod: lines for mod, lines in found.items() if lines}
    assert set(found) - set(IMPORT_BY_NAME) == set(), found
    # the allowed ones still exist and still need the exception (no stale allowance)
    assert set(found) == set(IMPORT_BY_NAME)


def _plugin_calls(path: Path) -> list[tuple[int, list[str]]]:
    """Calls of ``Registry(...)`` / ``import_submodules(...)``: line and the source of the
    first two arguments."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("Registry", "import_submodules"):
            calls.append((node.lineno, [ast.unparse(a) for a in node.args[:2]]))
    return calls


def test_registries_import_only_their_own_package() -> None:
    """``dlsec.plugins`` imports by computed name, so every caller hands it its own package
    (``__name__, __path__``): no module reaches another package's modules through it."""
    calls = {mod: _plugin_calls(path) for mod, path in _modules().items()
             if mod != "dlsec.plugins"}
    bad = {mod: c for mod, cs in calls.items() for c in cs if c[1] != ["__name__", "__path__"]}
    assert bad == {}
    users = sorted(mod for mod, cs in calls.items() if cs)
    assert users == ["dlsec.audit.sections", "dlsec.commands", "dlsec.scenarios.defended"]
