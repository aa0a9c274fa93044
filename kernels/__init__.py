"""The ops every model gathers and attends through, and the one switch that picks each op's implementation.

Model code calls `kernels.attention`, `kernels.masked_gather` and `kernels.predictor_tokens`, never a raw kernel.
Each kernel module ends with `KERNEL = KernelOp(...)` (kernels/registry.py) and is listed in REGISTRY below; each of
its public ops is a function here with the reference's signature, calling the implementation `configure()` chose.
`configure()` decides, once, which implementation each group runs: the config's `kernels:` section, overridden by
the environment (IJEPA_ATTENTION, IJEPA_GATHER); "auto" takes the group's choice for the device class. An op called
before any configure() configures the defaults once. The implementations themselves are the kernel modules' own
functions (`from kernels.attention import attention_triton`), listed in `REGISTRY[group].implementations`.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch

from kernels.attention import KERNEL as ATTENTION
from kernels.masked_gather import KERNEL as GATHER
from kernels.masked_gather import set_index_check
from kernels.registry import KernelOp

logger = logging.getLogger(__name__)

# Every kernel module's registration, one entry each (docs/kernels.md, "Adding a kernel"). The config's `kernels:`
# section, the switch, `bench.py --suite kernels` and the sm_90 compile check read this and nothing else.
REGISTRY: dict[str, KernelOp] = {op.name: op for op in (ATTENTION, GATHER)}
CHECK_INDICES_ENV = "IJEPA_CHECK_INDICES"

_chosen: dict[str, str] = {}  # group → implementation, set by configure()
_ops: dict[str, Callable] = {}  # public op → function, set by configure()


def _resolve(op: KernelOp, asked: str, device_class: str) -> str:
    asked = os.environ.get(op.env) or asked  # the environment wins over the config
    allowed = ("auto", *op.implementations)
    if asked not in allowed:
        raise ValueError(f"kernels: {op.name} implementation must be one of {allowed}, got {asked!r} "
                         f"(from {op.env} if set, else the config's kernels.{op.name})")
    impl = op.auto[device_class] if asked == "auto" else asked
    if impl in op.cuda_only and device_class == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"kernels: {op.name}={impl} needs a CUDA device; on the CPU choose "
                         f"{[i for i in op.implementations if i not in op.cuda_only]} (Triton's interpreter, "
                         f"TRITON_INTERPRET=1 set before importing kernels, is for tests)")
    return impl


def configure(device: Optional[str | torch.device] = None, check_indices: str = "first",
              **choices: str) -> dict[str, str]:
    """Decides, once, which implementation each group runs; returns {group: implementation}.

    Args:
        device: the device the model runs on; None = CUDA if available, else CPU.
        check_indices: "first" range-checks CUDA indices on each gather op's first call (CPU ones every call),
            "always" on every call (a host sync each: for debugging). IJEPA_CHECK_INDICES overrides it.
        **choices: group=implementation, e.g. attention="sdpa", gather="reference"; a group not named is "auto".
    """
    unknown = set(choices) - set(REGISTRY)
    if unknown:
        raise ValueError(f"kernels: unknown group(s) {sorted(unknown)}; the groups are {sorted(REGISTRY)}")
    if device is None:
        device_class = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_class = "cuda" if torch.device(device).type == "cuda" else "cpu"
    chosen = {name: _resolve(op, choices.get(name, "auto"), device_class) for name, op in REGISTRY.items()}
    set_index_check(os.environ.get(CHECK_INDICES_ENV) or check_indices)
    _chosen.clear()
    _chosen.update(chosen)
    _ops.clear()
    for name, impl in chosen.items():
        _ops.update(REGISTRY[name].implementations[impl])
    logger.info("kernels on %s: %s", device_class, ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return dict(chosen)


def implementations() -> dict[str, str]:
    """{group: implementation} in force (configuring the defaults if nothing did yet)."""
    if not _chosen:
        configure()
    return dict(_chosen)


def _op(name: str) -> Callable:
    """The implementation configure() chose for the public op `name` (configuring the defaults if nothing did yet)."""
    if not _ops:
        configure()
    return _ops[name]


# ------------------------------------------------------------------------------------------------------ public ops
# One function per public op of REGISTRY, with its reference's signature (tests/unit/test_kernels.py checks both).
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d), any strides → softmax(q kᵀ / sqrt(d)) v (B, H, N, d), no mask.

    The implementation of kernels.attention configure() chose (contract: kernels/attention.py attention_reference).
    """
    return _op("attention")(q, k, v)


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, N, D) or (1, N, D) shared by the batch; idx (M, B, K) or (B, K); pos (N, D) → (M·B, K, D), mask-major:
    out[m·B + b, i] = x[b, idx[m, b, i]] (+ pos[idx[m, b, i]]); the backward scatter-adds into x and pos.

    The implementation of kernels.gather configure() chose (contract: kernels/masked_gather.py
    masked_gather_reference).
    """
    return _op("masked_gather")(x, idx, pos)


def predictor_tokens(x_ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, pos: torch.Tensor,
                     mask_token: torch.Tensor) -> torch.Tensor:
    """The predictor's input, in one pass where the official code chains repeat / gather / cat / add: (M·B, Kc + Kt, D)
    mask-major rows from the context features x_ctx (B, Kc, D), their indices ctx_idx (B, Kc), the targets tgt_idx
    (M, B, Kt), the positional table pos (N, D) and the mask token. The implementation of kernels.gather configure()
    chose; the contract, argument by argument: kernels/masked_gather.py predictor_tokens_reference."""
    return _op("predictor_tokens")(x_ctx, ctx_idx, tgt_idx, pos, mask_token)
