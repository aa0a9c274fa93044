"""The ops every model gathers and attends through, and the one switch that picks each op's implementation.

Model code calls `kernels.attention`, `kernels.masked_gather` and `kernels.predictor_tokens`, never a raw kernel.
`configure()` decides, once, which implementation each op runs:

    attention: triton | sdpa | reference        gather (masked_gather and predictor_tokens): triton | reference

from the config's `kernels:` section, overridden by the environment (IJEPA_ATTENTION, IJEPA_GATHER); "auto" takes
the AUTO entry for the device class. An op called before any configure() configures the defaults once.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch

from kernels.attention import attention_reference, attention_sdpa, attention_triton
from kernels.masked_gather import (masked_gather_reference, masked_gather_triton, predictor_tokens_reference,
                                   predictor_tokens_triton, set_index_check)

__all__ = ["configure", "implementations", "attention", "masked_gather", "predictor_tokens", "attention_reference",
           "attention_sdpa", "attention_triton", "masked_gather_reference", "masked_gather_triton",
           "predictor_tokens_reference", "predictor_tokens_triton"]

logger = logging.getLogger(__name__)

IMPLS: dict[str, dict[str, dict[str, Callable]]] = {
    "attention": {
        "triton": {"attention": attention_triton},
        "sdpa": {"attention": attention_sdpa},
        "reference": {"attention": attention_reference},
    },
    "gather": {
        "triton": {"masked_gather": masked_gather_triton, "predictor_tokens": predictor_tokens_triton},
        "reference": {"masked_gather": masked_gather_reference, "predictor_tokens": predictor_tokens_reference},
    },
}
# What "auto" means per device class: the implementation measured faster there (benchmarks/kernels.py prints both).
# CUDA: the Triton kernels have no GPU measurement yet (bench/results/ holds none), so targets.md's rule applies:
#   SDPA stays the attention default until Triton matches the best SDPA backend, and the gather stays on index_select
#   until the Triton gather is measured at >= 80% of copy bandwidth. Flip these entries when the GPU script says so.
# CPU: Triton runs there only in its interpreter (tests); SDPA measured faster than the explicit softmax on this
#   project's CPU shapes (benchmarks/kernels.py on the 2-core dev machine).
AUTO = {
    "cuda": {"attention": "sdpa", "gather": "reference"},
    "cpu": {"attention": "sdpa", "gather": "reference"},
}
ENV = {"attention": "IJEPA_ATTENTION", "gather": "IJEPA_GATHER", "check_indices": "IJEPA_CHECK_INDICES"}

_chosen: dict[str, str] = {}  # op group → implementation, set by configure()
_ops: dict[str, Callable] = {}  # public op → function, set by configure()


def _resolve(group: str, asked: str, device_class: str) -> str:
    asked = os.environ.get(ENV[group]) or asked  # the environment wins over the config
    allowed = ("auto", *IMPLS[group])
    if asked not in allowed:
        raise ValueError(f"kernels: {group} implementation must be one of {allowed}, got {asked!r} "
                         f"(from {ENV[group]} if set, else the config's kernels.{group})")
    impl = AUTO[device_class][group] if asked == "auto" else asked
    if impl == "triton" and device_class == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"kernels: {group}=triton needs a CUDA device; on the CPU choose "
                         f"{[i for i in IMPLS[group] if i != 'triton']} (Triton's interpreter, TRITON_INTERPRET=1 set "
                         f"before importing kernels, is for tests)")
    return impl


def configure(attention: str = "auto", gather: str = "auto", device: Optional[str | torch.device] = None,
              check_indices: str = "first") -> dict[str, str]:
    """Decides, once, which implementation each op runs; returns {group: implementation}.

    Args:
        attention: auto | triton | sdpa | reference (IJEPA_ATTENTION overrides it).
        gather: auto | triton | reference, for masked_gather and predictor_tokens (IJEPA_GATHER overrides it).
        device: the device the model runs on; None = CUDA if available, else CPU.
        check_indices: "first" range-checks CUDA indices on each gather op's first call (CPU ones every call),
            "always" on every call (a host sync each: for debugging). IJEPA_CHECK_INDICES overrides it.
    """
    if device is None:
        device_class = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_class = "cuda" if torch.device(device).type == "cuda" else "cpu"
    chosen = {group: _resolve(group, asked, device_class) for group, asked in (("attention", attention),
                                                                              ("gather", gather))}
    set_index_check(os.environ.get(ENV["check_indices"]) or check_indices)
    _chosen.clear()
    _chosen.update(chosen)
    _ops.clear()
    for group, impl in chosen.items():
        _ops.update(IMPLS[group][impl])
    logger.info("kernels on %s: attention=%s, gather=%s", device_class, chosen["attention"], chosen["gather"])
    return dict(chosen)


def implementations() -> dict[str, str]:
    """{group: implementation} in force (configuring the defaults if nothing did yet)."""
    if not _chosen:
        configure()
    return dict(_chosen)


def _op(name: str) -> Callable:
    if not _ops:
        configure()
    return _ops[name]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d) → softmax(q kᵀ / sqrt(d)) v (B, H, N, d), no mask."""
    return _op("attention")(q, k, v)


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, N, D) or (1, N, D); idx (M, B, K) or (B, K); pos (N, D) → (M·B, K, D): out[m·B + b, i] =
    x[b, idx[m, b, i]] (+ pos[idx[m, b, i]]). Backward scatter-adds into x and pos."""
    return _op("masked_gather")(x, idx, pos)


def predictor_tokens(x_ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, pos: torch.Tensor,
                     mask_token: torch.Tensor) -> torch.Tensor:
    """The predictor's input (M·B, Kc + Kt, D): [x_ctx[b] + pos[ctx_idx[b]] ‖ mask_token + pos[tgt_idx[m, b]]] for
    row m·B + b, in one pass (see kernels.masked_gather.predictor_tokens_reference)."""
    return _op("predictor_tokens")(x_ctx, ctx_idx, tgt_idx, pos, mask_token)
