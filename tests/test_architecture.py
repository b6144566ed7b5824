"""The package layout holds: imports flow one way (no module imports one that imports it back; no layer imports
a layer above it), trainers / rl / data / inference never branch on the model kind, and method sections need no
import side effect. Read from the source with ``ast``, so the test sees imports inside functions too."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mova"

#: lower numbers sit below: a module may import its own layer and the ones below, never one above.
LAYERS = {
    "mova.errors": 0, "mova.registry": 0, "mova.config": 0, "mova.presets": 0, "mova.artifacts": 0,
    "mova.model": 1,
    "mova.data": 2, "mova.metrics": 2,
    "mova.inference": 3, "mova.rl": 3,
    "mova.trainers": 4, "mova.continual": 4, "mova.evaluation": 4, "mova.export": 4,
    "mova.cli": 5, "mova.demo": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            edges[mod].update(resolve(t) for t in targets if t.startswith("mova"))
        edges[mod].discard(mod)
        edges[mod].discard("")
    return edges


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for k in range(len(parts), 1, -1):
        if ".".join(parts[:k]) in LAYERS:
            return LAYERS[".".join(parts[:k])]
    return None


def test_no_import_cycles():
    edges = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in list(edges):
        if module not in index:
            visit(module)
    assert cycles == [], cycles


def test_imports_flow_downward():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
              if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert upward == [], upward


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if m != "mova" and _layer(m) is None)
    assert unplaced == [], f"add these to LAYERS: {unplaced}"


def test_no_model_kind_branches_below_the_policy_interface():
    """Trainers, RL, data and inference ask their PolicyKind / processor, never "is this a Mova model?"."""
    found = []
    for sub in ("trainers", "rl", "data", "inference"):
        for path in (PACKAGE / sub).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"is_mova|mova_base|model_type\"?\)? == \"mova\"", line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == [], found
