"""The package's structure: no import cycles, and no import that runs back up the layers.

Imports are read from the source (`ast`), module-level and function-level ("lazy") alike: a lazy import that closes a
cycle or reaches a higher layer is the same coupling, only deferred.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vlmrobust"

#: lower layers never import higher ones; a package's own modules may import each other (no cycles)
LAYERS = {
    "registry": 0, "layout": 0, "utils": 0,
    "metrics": 1, "attacks": 1,
    "data": 2, "testing": 2,
    "models": 3,
    "optim": 4, "trainers": 4, "eval": 4,
    "hub": 5,
    "script_utils": 6, "recipe_main": 6, "vlm_recipe_main": 6,
    "cli": 7,
}


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (module-level and lazy), package-to-own-child edges left out."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                targets = [name] + [f"{name}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod and not t.startswith(mod + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return cycles


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_runs_back_up_the_layers():
    graph = import_graph()
    unplaced = sorted({m.split(".")[1] for m in graph if "." in m} - set(LAYERS))
    assert not unplaced, f"place these in LAYERS: {unplaced}"
    up = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
          if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert not up, "imports from a higher layer:\n" + "\n".join(sorted(up))


def test_the_checks_find_what_they_look_for(tmp_path):
    # a cycle through a lazy import, and an upward import, in a throwaway package
    pkg = tmp_path / "vlmrobust"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("from .b import f\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "attacks.py").write_text("def h():\n    from .models.a import f\n")
    graph = import_graph(pkg)
    assert find_cycles(graph) == [["vlmrobust.models.a", "vlmrobust.models.b", "vlmrobust.models.a"]]
    assert "vlmrobust.models.a" in graph["vlmrobust.attacks"] and _layer("vlmrobust.models.a") > _layer(
        "vlmrobust.attacks")


def test_every_module_imports():
    for module in sorted(_modules()):
        importlib.import_module(module)


#: the longest a module of `vlmrobust/` may be
MAX_LINES = 450


def test_no_module_is_longer_than_450_lines():
    lengths = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {m: n for m, n in lengths.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_the_schema_runner_and_report_know_no_eval_task_by_name():
    """A task is one module in eval/tasks/ plus one registration: the modules every task goes through hold no task
    name, cell kind or task-owned key as a string (no `if task == "vqa"` branch can hide there)."""
    from vlmrobust.eval.tasks import all_tasks

    tasks = all_tasks()
    owned = {t.name for t in tasks} | {k for t in tasks for k in (*t.cell_kinds, *t.keys, *t.suite_keys)}
    # classification's cell kinds "clean" / "attack" are also the shared field names of robustness-curve rows
    # ({"clean", "robust"}) and of attack cells ({"attack": label, "norm", "eps"}) that every curve task uses
    owned -= {"clean", "attack"}
    assert {"vqa", "caption", "classification", "corruptions", "margin", "templates", "vqa_clean"} <= owned
    for name in ("suite", "runner", "report", "results", "schema", "plots", "tables", "convert"):
        tree = ast.parse((PACKAGE / "eval" / f"{name}.py").read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & owned, f"vlmrobust/eval/{name}.py names eval tasks: {sorted(strings & owned)}"
