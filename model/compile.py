"""torch.compile of the transformer blocks, with the token dimension dynamic from the first call.

Mask lengths change every step under `mask.length_policy: batch_min`, so each block's inner `_forward` is compiled
once with its input's token dimension marked dynamic: one graph per block shape, whatever the lengths, no
recompilation. Activation checkpointing, module hooks, the patch embed, gathers, norms and heads stay outside the
compiled region. What is compiled, what is not and why, and the one bounded CPU exception: docs/training.md.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from model.vit import Block

TOKEN_DIM = 1  # blocks take x (rows, N, D); N = the mask length, the dimension that varies


def _tokens_dynamic(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """fn(x) with x's token dimension marked dynamic first: dynamo then traces N as a symbol, never as a constant
    (and raises, naming the op, if something in the block forces it to one)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.mark_dynamic(x, TOKEN_DIM)
        return fn(x)

    return call


def compile_blocks(module: nn.Module, dynamic_tokens: bool = True, **compile_kwargs) -> int:
    """Compiles the inner forward of every `model.vit.Block` under `module`, in place; returns how many.

    Parameter names, state dicts and `set_grad_checkpointing` are unchanged, so checkpoints and the official/timm
    converters see the same module. Call it once, after moving the module to its device and dtype is not needed
    (parameters are graph inputs, not constants), and before handing the module to a wrapper such as DeepSpeed.

    Args:
        module: any module holding Blocks (an encoder, a predictor, the JEPA pair).
        dynamic_tokens: mark the token dimension dynamic on every call (False = torch.compile's default: the first
            call specialises on N and the next length recompiles; kept for tests and measurements).
        **compile_kwargs: passed to torch.compile (e.g. mode="max-autotune-no-cudagraphs").
    """
    count = 0
    for block in module.modules():
        if not isinstance(block, Block):
            continue
        if "_forward" in block.__dict__:
            raise RuntimeError(f"compile_blocks: {type(block).__name__} is already compiled; call it once per module")
        compiled = torch.compile(block._forward, **compile_kwargs)  # the bound method: one graph per block shape
        block._forward = _tokens_dynamic(compiled) if dynamic_tokens else compiled  # instance attr shadows the method
        count += 1
    return count
