"""The house: every library module imports in a fresh interpreter without pulling in an entry script; imports form no
cycle; arrows point down the layers (a lower package receives values, never imports the one above); and a kernel is
added by its module plus its lines in kernels/__init__.py (the config, the switch, the bench suite and the compile
check read the registry)."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_SCRIPTS = {"train", "eval", "export", "bench", "shard_dataset", "report"}
# Lowest first. A module may import its own package and the packages of lower layers, nothing else of ours.
LAYERS = [{"util"}, {"tools"}, {"kernels"}, {"model"}, {"pipeline"}, {"config"}, {"training"}, {"evaluation"},
          {"benchmarks", "reporting"}]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def library_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the library packages."""
    modules = {}
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


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


@pytest.mark.slow  # starts a process
def test_every_library_module_imports_in_a_fresh_interpreter_without_an_entry_script():
    names = sorted(library_modules())
    code = textwrap.dedent(f"""
        import importlib, json, sys
        failed = {{}}
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except Exception as err:  # reported below, one line per module
                failed[name] = f"{{type(err).__name__}}: {{err}}"
        print(json.dumps({{"failed": failed, "entry": sorted(set({sorted(ENTRY_SCRIPTS)!r}) & set(sys.modules))}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"failed": {}, "entry": []}, result


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


@pytest.mark.slow  # starts a process
def test_a_new_kernel_is_its_module_and_its_lines_in_the_package(tmp_path):
    """Drop one module into a copy of kernels/ and list it in kernels/__init__.py as docs/kernels.md says (its import,
    its entry in REGISTRY, a function per public op) and its field in config/sections.py's KernelsConfig: the config
    accepts its key and checks its values, the switch runs it, the kernels suite times it, with no other file
    touched."""
    repo = tmp_path / "repo"
    for package in [*LAYER, "configs"]:
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for script in ENTRY_SCRIPTS:
        shutil.copy(ROOT / f"{script}.py", repo)
    (repo / "kernels" / "double.py").write_text(textwrap.dedent('''
        import torch
        from kernels.registry import BenchCase, KernelOp

        def double_fast(x): return x + x
        def double_reference(x): return 2 * x

        IMPLEMENTATIONS = {"fast": {"double": double_fast}, "reference": {"double": double_reference}}
        KERNEL = KernelOp("double", IMPLEMENTATIONS, reference="reference", auto={"cuda": "fast", "cpu": "reference"},
                          bench_cases=lambda device, batch: [BenchCase(
                              "double", {k: v["double"] for k, v in IMPLEMENTATIONS.items()},
                              [torch.ones(batch, 8, device=device)], None, (64.0 * batch, 0.0), "B")])
    '''))
    init = repo / "kernels" / "__init__.py"
    source = init.read_text()
    anchor = "from kernels.attention import KERNEL as ATTENTION\n"
    for old, new in [(anchor, anchor + "from kernels.double import KERNEL as DOUBLE\n"),
                     ("for op in (ATTENTION, GATHER)}", "for op in (ATTENTION, GATHER, DOUBLE)}")]:
        assert source.count(old) == 1, f"kernels/__init__.py lost {old!r}: update this test and docs/kernels.md"
        source = source.replace(old, new)
    init.write_text(source + '\n\ndef double(x):\n    return _op("double")(x)\n')
    sections = repo / "config" / "sections.py"
    text, field = sections.read_text(), '    gather: Literal["auto", "triton", "reference"] = "auto"\n'
    assert text.count(field) == 1, "config/sections.py lost KernelsConfig.gather: update this test and docs/kernels.md"
    sections.write_text(text.replace(field, field + '    double: Literal["auto", "fast", "reference"] = "auto"\n'))
    code = textwrap.dedent("""
        import torch, kernels
        from config import ConfigError, load_config
        from benchmarks import kernels as suite
        cfg = load_config("configs/tiny_cpu.yaml", overrides=["kernels.double=fast"])
        assert cfg.kernels.double == "fast"
        try:
            load_config("configs/tiny_cpu.yaml", overrides=["kernels.double=slow"])
            raise SystemExit("kernels.double=slow was accepted")
        except ConfigError as err:
            assert "'fast'" in str(err) and "'reference'" in str(err), err
        assert kernels.configure(device="cpu", double="fast")["double"] == "fast"
        assert torch.equal(kernels.double(torch.ones(2)), torch.full((2,), 2.0))
        rows = suite.run()["rows"]
        assert {r["impl"] for r in rows if r["kernel"] == "double"} == {"fast", "reference"}
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
