"""The house, read from the source: imports form no cycle; arrows point down the layers (a lower package receives
values, never imports the one above); no library module imports an entry script. (Every library module importing in a
fresh interpreter, and a new kernel added by its module plus its lines in kernels/__init__.py:
e2e/test_layout_imports.py.)"""
from __future__ import annotations

import ast
from pathlib import Path

from library_layout import ENTRY_SCRIPTS, LAYER, ROOT, library_modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (module level or inside functions): `import a.b` → a.b,
    `from a.b import c` → a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                         for alias in node.names)
    return {m for m in found if m in known or m in ENTRY_SCRIPTS} - {name}


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    known = set(modules) | ENTRY_SCRIPTS
    graph = {name: imports_of(name, path, known) for name, path in modules.items()}
    graph.update({name: imports_of(name, ROOT / f"{name}.py", known) for name in ENTRY_SCRIPTS})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_cycles_and_lazy_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    known = {"config", "config.schema", "pipeline", "pipeline.loader", "train"}
    lazy = tmp_path / "probe.py"
    lazy.write_text("import os\n\ndef f():\n    from config.schema import Config\n    import pipeline.loader\n"
                    "    from train import main\n")
    assert imports_of("pipeline.probe", lazy, known) == {"config.schema", "pipeline.loader", "train"}


def test_imports_form_no_cycle_and_point_down_the_layers():
    graph = import_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    upward = []
    for module, targets in graph.items():
        package = module.split(".")[0]
        for target in targets:
            if target in ENTRY_SCRIPTS:
                upward.append(f"{module} imports the entry script {target}.py")
            elif package in LAYER and target.split(".")[0] != package \
                    and LAYER[target.split(".")[0]] >= LAYER[package]:
                upward.append(f"{module} imports {target} (layer {LAYER[target.split('.')[0]]} >= {LAYER[package]})")
    assert not upward, "\n".join(sorted(upward))
    assert not any(t.split(".")[0] == "config" for m, ts in graph.items() for t in ts
                   if m.split(".")[0] in ("pipeline", "model", "kernels"))


def test_no_test_file_name_is_in_both_tiers():
    """tests/ has no packages, so pytest imports each test file by its basename: one name in tests/unit and
    tests/e2e makes `make test` (both folders) fail to collect ('import file mismatch'), while each tier alone
    passes."""
    names = [{p.name for p in (ROOT / "tests" / tier).glob("test_*.py")} for tier in ("unit", "e2e")]
    assert names[0] and names[1] and not names[0] & names[1], names[0] & names[1]
