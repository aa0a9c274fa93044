"""torch.compile of the transformer blocks, with the token dimension dynamic from the first call.

The mask lengths change every step under `mask.length_policy: batch_min` (K_enc = the batch's shortest context, the
predictor sees Kc + Kt tokens), so a block compiled for one length would recompile on the next step and, past
dynamo's recompile limit, fall back to eager. Here each block's inner `_forward` (attention + MLP) is compiled once,
and its input's token dimension (dim 1) is marked dynamic before every call, so the graph never specialises on it: one
graph per block shape (dim, heads, dtype, grad mode), shared by every block of that shape, whatever the lengths.

What stays outside the compiled region, on purpose:
- activation checkpointing: `Block.forward` wraps `_forward` in torch.utils.checkpoint, which then recomputes the
  compiled graph in backward (no checkpoint inside the graph);
- module hooks: the block's own `__call__` runs eagerly, so wrappers that hook blocks keep working;
- the patch embed, gathers, norms and heads (a few ops per step, not worth a graph each).

One exception, on the CPU only: inductor's C++ codegen guards fp32 sums on `rows·N > 4096` (a more precise
accumulation above that), so a block shape gets at most one more graph, when rows·N first crosses 4096 (the tiny
config's predictor, 128 rows, at N = 33). Bounded, not per step; CUDA's Triton codegen has no such guard.

The kernels switch is read inside the graph (dynamo guards on the chosen op, so a later `kernels.configure()` that
picks another op recompiles instead of running the stale one). Tested on the CPU with attention = sdpa and reference;
the Triton attention under torch.compile has not been run (no GPU measurement yet).
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
