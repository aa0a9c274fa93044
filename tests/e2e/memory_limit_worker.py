"""Launched by tests/e2e/test_micro_batch.py: train.py under a process memory limit (RLIMIT_AS), set when the
training's first forward pass starts to what the process has mapped then plus BUDGET bytes. The set-up (imports,
the engine, the loader) runs unlimited; the steps meet a real allocation failure of the CPU allocator when a micro
batch needs more than BUDGET. Nothing in the product is switched or patched.

    python tests/e2e/memory_limit_worker.py BUDGET_MB train.py-arguments...
    torchrun --nproc_per_node 2 tests/e2e/memory_limit_worker.py BUDGET_MB ...
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def mapped_bytes() -> int:
    """VmSize: what the process has mapped now (what RLIMIT_AS bounds)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_at_first_forward(budget: int):
    """A global forward pre-hook that sets RLIMIT_AS once, at the first module call, then removes itself."""
    def hook(module, args):
        handle.remove()
        limit = mapped_bytes() + budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        print(f"memory limit: {limit / 2**20:.0f} MiB mapped at most (rank {os.environ.get('RANK', '0')})",
              file=sys.stderr, flush=True)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)


def main() -> None:
    budget = int(float(sys.argv[1]) * 2**20)
    sys.argv = ["train.py", *sys.argv[2:]]
    import train
    from util.processes import exit_without_teardown

    limit_at_first_forward(budget)
    exit_without_teardown(train.main())


if __name__ == "__main__":
    main()
