"""The house's layers and the library's modules, for the layout tests (in process: the import graph; in fresh
interpreters: every module imports alone, and a new kernel is its module and its lines in the package).

    from library_layout import ENTRY_SCRIPTS, LAYER, ROOT, library_modules
"""
from __future__ import annotations

from pathlib import Path

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
