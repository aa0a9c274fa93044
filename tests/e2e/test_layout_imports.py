"""The house, in fresh interpreters: every library module imports without pulling in an entry script; and a kernel is
added by its module plus its lines in kernels/__init__.py (the config, the switch, the bench suite and the compile
check read the registry). (The import graph read from the source: unit/test_layout.py.)"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

from library_layout import ENTRY_SCRIPTS, LAYER, ROOT, library_modules


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
    text = sections.read_text()
    field = re.search(r'    gather: Literal\["auto", "triton", "reference"\] = "auto"\n    """.*"""\n', text)
    assert field, "config/sections.py lost KernelsConfig.gather and its docstring: update this test and docs/kernels.md"
    sections.write_text(text.replace(field[0], field[0] + '    double: Literal["auto", "fast", "reference"] = "auto"\n'
                                                          '    """the doubling implementation"""\n'))
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
