"""What a kernel module declares, in one place: its implementations, the one "auto" picks per device class, the Triton
specialisations the sm_90 compile check builds, and the cases the kernels bench suite times.

Each module of kernels/ that holds a switchable op ends with `KERNEL = KernelOp(...)`; kernels/__init__.py lists it
in REGISTRY and defines its public ops. The config's `kernels:` section, the switch (`kernels.configure`),
`bench.py --suite kernels` and `python -m benchmarks.aot_compile_check` read REGISTRY and nothing else
(docs/kernels.md, "Adding a kernel").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional


@dataclass(frozen=True)
class CompileSpec:
    """One specialisation of a @triton.jit kernel: pointer dtypes ("*bf16", "*i64" ...), constexpr values and launch
    options. Arguments in neither are i32 scalars (fp32 when their name ends in "scale")."""

    kernel: Any  # a @triton.jit function or a triton.autotune wrapper of one
    pointers: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""


@dataclass(frozen=True)
class BenchCase:
    """One shape the kernels suite times every implementation at.

    `ops` maps an implementation (or a variant, e.g. one SDPA backend forced) to a callable taking `inputs`;
    `leaves` are the inputs a backward pass differentiates (None: forward only). `work` is (forward, backward) in
    `unit`: the useful bytes moved ("B", compared with a device copy) or the matmul FLOPs ("FLOP").
    """

    name: str
    ops: dict[str, Callable]
    inputs: list
    leaves: Optional[list]
    work: tuple[float, float]
    unit: Literal["B", "FLOP"]


@dataclass(frozen=True)
class KernelOp:
    """A switchable op group: the config key `kernels.<name>` and the environment variable `IJEPA_<NAME>`.

    Args:
        name: the group's name (one implementation choice covers every public op of the group).
        implementations: implementation → {public op name → function}; every implementation provides every op.
        reference: the plain-PyTorch implementation the others are tested and benchmarked against.
        auto: device class ("cuda", "cpu") → the implementation `auto` means there (measured faster, or the safe one).
        cuda_only: implementations that need a CUDA device (on the CPU only Triton's interpreter runs them: tests).
        compile_specs: quick → the Triton specialisations to compile for sm_90 (quick: the training shapes only).
        bench_cases: (device, batch) → the cases the kernels suite times (ViT-H/14 shapes at that batch).
    """

    name: str
    implementations: dict[str, dict[str, Callable]]
    reference: str
    auto: dict[str, str]
    cuda_only: frozenset[str] = frozenset()
    compile_specs: Callable[[bool], list[CompileSpec]] = field(default=lambda quick: [])
    bench_cases: Callable[[Any, int], list[BenchCase]] = field(default=lambda device, batch: [])

    def __post_init__(self):
        ops = {name: set(fns) for name, fns in self.implementations.items()}
        first = next(iter(ops.values()))
        if any(o != first for o in ops.values()) or self.reference not in ops or \
                any(impl not in ops for impl in self.auto.values()):
            raise ValueError(f"kernel {self.name}: every implementation must provide the same ops {sorted(first)}, "
                             f"and reference / auto must name implementations of {sorted(ops)}")

    @property
    def ops(self) -> tuple[str, ...]:
        """The public op names of the group (kernels.<op>)."""
        return tuple(self.implementations[self.reference])

    @property
    def env(self) -> str:
        return f"IJEPA_{self.name.upper()}"
