"""Dependencies point one way: cli -> pipelines -> components -> steps -> library, with no loop between packages.

Read from the source with ``ast`` (imports inside functions count too), so a lazy import that
points upward fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"entropy_ft": ROOT / "entropy_ft", "entropy_ft.components": ROOT / "components",
           "entropy_ft.pipelines": ROOT / "pipelines"}
# the layers from the top; a module may import its own layer and those below it
LAYERS = ["entropy_ft.cli", "entropy_ft.pipelines", "entropy_ft.components", "entropy_ft.steps"]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "entropy_ft" and path.is_relative_to(ROOT / "entropy_ft") and (
                    path.parts[len((ROOT / "entropy_ft").parts)] in ("components", "pipelines")):
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.update({base, *(f"{base}.{a.name}" for a in node.names)})
    return {m for m in out if m.startswith("entropy_ft")}


def _layer(module: str) -> int:
    """0 for the CLI ... 3 for the stages, 4 for the library."""
    return next((i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), len(LAYERS))


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in _PACKAGES else "entropy_ft"


MODULES = _modules()
_PACKAGES = {m for m, p in MODULES.items() if p.name == "__init__.py"}


def test_every_import_points_down():
    upward = [(name, target) for name, path in MODULES.items() for target in _imports(name, path)
              if target in MODULES and _layer(target) < _layer(name)]
    assert not upward, upward


def test_no_import_loop_between_packages():
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for target in _imports(name, path):
            if target in MODULES and _package(target) != _package(name):
                edges.setdefault(_package(name), set()).add(_package(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    loops = sorted(p for p in edges if reaches(p, p, {p}))
    assert not loops, {p: sorted(edges[p]) for p in loops}


def test_the_check_sees_the_layers():
    """The test above would pass on nothing: make sure it reads the real tree."""
    assert {"entropy_ft.steps.ingest", "entropy_ft.components.ingest", "entropy_ft.pipelines.run",
            "entropy_ft.model.factory", "entropy_ft.cli"} <= set(MODULES)
    component = "entropy_ft.components.ingest"
    assert "entropy_ft.steps.ingest" in _imports(component, MODULES[component])
