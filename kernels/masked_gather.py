"""Masked-token gather: out[m·B + b, i, :] = x[b, idx[m, b, i], :] (+ pos[idx[m, b, i], :]), one launch for every
mask; and the predictor's input assembly in one pass (`predictor_tokens`: context embedding + pos at the context
indices, mask token + pos at the target indices, repeated per target mask), where the official code chains repeat /
gather / cat / add.

Layout (style): the @triton.jit kernels, the launch functions (shape, dtype and index-range checks), the autograd
Functions, the public Triton ops, the plain-PyTorch references, then the registration (KERNEL). Nothing launches at
import. The kernels upcast every element to fp32 and round once on the store (docs/kernels.md says why).
"""
from __future__ import annotations

import itertools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.registry import BenchCase, CompileSpec, KernelOp

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once: @triton.jit picks its mode at definition


# ---------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _gather_fwd_kernel(X, POS, IDX, OUT, R, K, B, N, D,
                       stride_xb, stride_xn, stride_xd, stride_pn, stride_pd,
                       HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (BLOCK_R rows × BLOCK_D features) tile of out (R = M·B·K, D); row r = (m·B + b)·K + i."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    live = rows < R
    tok = tl.load(IDX + rows, mask=live, other=0).to(tl.int64)
    ok = live & (tok >= 0) & (tok < N)  # an out-of-range token never touches memory (the host check names it)
    b = ((rows // K) % B).to(tl.int64)
    mask = ok[:, None] & (cols < D)[None, :]
    val = tl.load(X + b[:, None] * stride_xb + tok[:, None] * stride_xn + cols[None, :] * stride_xd,
                  mask=mask, other=0.0).to(tl.float32)
    if HAS_POS:
        val += tl.load(POS + tok[:, None] * stride_pn + cols[None, :] * stride_pd, mask=mask, other=0.0).to(tl.float32)
    out_mask = live[:, None] & (cols < D)[None, :]
    tl.store(OUT + rows.to(tl.int64)[:, None] * D + cols[None, :], val.to(OUT.dtype.element_ty), mask=out_mask)


@triton.jit
def _gather_bwd_kernel(GRAD, IDX, DX, DPOS, R, K, B, N, D, dx_stride_b,
                       X_GRAD: tl.constexpr, POS_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scatter-add one tile of grad (R, D) into fp32 dx (B or 1, N, D) and dpos (N, D); repeated tokens accumulate."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    live = rows < R
    tok = tl.load(IDX + rows, mask=live, other=0).to(tl.int64)
    ok = live & (tok >= 0) & (tok < N)
    b = ((rows // K) % B).to(tl.int64)
    mask = ok[:, None] & (cols < D)[None, :]
    g = tl.load(GRAD + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # Atomics: the same token can sit in several masks (and in every row of a shared x); a token seen once per
    # destination (one mask, unique indices) gets exactly one add, so that case stays deterministic.
    if X_GRAD:
        tl.atomic_add(DX + b[:, None] * dx_stride_b + tok[:, None] * D + cols[None, :], g, mask=mask, sem="relaxed")
    if POS_GRAD:
        tl.atomic_add(DPOS + tok[:, None] * D + cols[None, :], g, mask=mask, sem="relaxed")


@triton.jit
def _predictor_tokens_fwd_kernel(XC, CTX_IDX, TGT_IDX, POS, TOKEN, OUT, R, L, KC, KT, B, N, D,
                                 stride_xb, stride_xn, stride_xd, stride_pn, stride_pd,
                                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One tile of out (R = M·B·L, D), L = Kc + Kt: row (m·B + b)·L + i is x_ctx[b, i] + pos[ctx_idx[b, i]] for
    i < Kc, else mask_token + pos[tgt_idx[m, b, i − Kc]]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    live = rows < R
    seq = rows // L  # m·B + b
    i = rows % L
    b = seq % B
    is_ctx = i < KC
    ctx_tok = tl.load(CTX_IDX + b * KC + i, mask=live & is_ctx, other=0).to(tl.int64)
    tgt_tok = tl.load(TGT_IDX + seq * KT + (i - KC), mask=live & (i >= KC), other=0).to(tl.int64)
    tok = tl.where(is_ctx, ctx_tok, tgt_tok)
    ok = live & (tok >= 0) & (tok < N)
    cmask = cols < D
    x = tl.load(XC + b.to(tl.int64)[:, None] * stride_xb + i[:, None] * stride_xn + cols[None, :] * stride_xd,
                mask=(live & is_ctx)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    token = tl.load(TOKEN + cols, mask=cmask, other=0.0).to(tl.float32)
    val = tl.where(is_ctx[:, None], x, token[None, :])
    val += tl.load(POS + tok[:, None] * stride_pn + cols[None, :] * stride_pd,
                   mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    tl.store(OUT + rows.to(tl.int64)[:, None] * D + cols[None, :], val.to(OUT.dtype.element_ty),
             mask=live[:, None] & cmask[None, :])


@triton.jit
def _predictor_ctx_grad_kernel(GRAD, DX, M, B, L, KC, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx_ctx[b, i] = Σ_m grad[m·B + b, i]: the context rows were repeated once per mask; no atomics needed."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (b, i) over B·Kc
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < B * KC)[:, None] & (cols < D)[None, :]
    b = rows // KC
    i = rows % KC
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for m in range(M):
        src = ((m * B + b) * L + i).to(tl.int64)
        acc += tl.load(GRAD + src[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + rows.to(tl.int64)[:, None] * D + cols[None, :], acc.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------- launch + checks
_check_every_call = False  # kernels.configure(check_indices="always") sets it; "first" checks once per op on CUDA
_checked_ops: set[str] = set()


def set_index_check(mode: str) -> None:
    """"first": CUDA indices are range-checked on each op's first call (one host sync), CPU indices on every call
    (no sync there); "always": every call, CUDA included (a debugging aid: it syncs the host every call)."""
    global _check_every_call
    if mode not in ("first", "always"):
        raise ValueError(f"index check mode must be 'first' or 'always', got {mode!r}")
    _check_every_call = mode == "always"
    _checked_ops.clear()


def check_index_range(idx: torch.Tensor, n: int, name: str, op: str) -> None:
    """Raises IndexError naming the first out-of-range value of idx and where it sits, as the policy above says."""
    if idx.numel() == 0 or idx.is_meta or (idx.is_cuda and not _check_every_call and op in _checked_ops):
        return  # meta tensors (FLOP counting without memory) hold no values to check
    _checked_ops.add(op)
    lo, hi = int(idx.min()), int(idx.max())  # a host sync on CUDA: hence once per op unless asked
    if lo >= 0 and hi < n:
        return
    bad = lo if lo < 0 else hi
    where = tuple((idx == bad).nonzero()[0].tolist())
    raise IndexError(f"{op}: {name}{list(where)} = {bad} is out of range: the source has {n} tokens (valid 0..{n - 1})")


def _check(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    if x.dim() != 3:
        raise ValueError(f"masked_gather: x must be (B, N, D), got shape {tuple(x.shape)}")
    if idx.dim() == 2:
        idx = idx.unsqueeze(0)  # one mask: (B, K) → (1, B, K)
    if idx.dim() != 3 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"masked_gather: idx must be an int32/int64 (M, B, K) or (B, K) tensor, "
                         f"got {idx.dtype} of shape {tuple(idx.shape)}")
    if x.shape[0] not in (1, idx.shape[1]):
        raise ValueError(f"masked_gather: x has batch {x.shape[0]} but idx has batch {idx.shape[1]} (x may have "
                         f"batch 1 to be shared by every row)")
    if pos is not None and (pos.dim() != 2 or pos.shape != x.shape[1:]):
        raise ValueError(f"masked_gather: pos must be (N, D) = {tuple(x.shape[1:])}, got {tuple(pos.shape)}")
    return idx


def _check_triton_device(op: str, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: every tensor must be on one device, got {sorted(map(str, devices))}")
    if not tensors[0].is_cuda and not INTERPRET:
        raise RuntimeError(f"{op}: the Triton kernels need CUDA tensors (got {tensors[0].device}); on the CPU use the "
                           f"reference (kernels.configure(gather='reference')) or set TRITON_INTERPRET=1 before "
                           f"importing kernels, as the tests do")
    for t in tensors:
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"{op}: float tensors must be fp32, fp16 or bf16, got {t.dtype}")


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel writes: the interpreter's fp32 → bf16 store truncates where the GPU rounds to nearest, so
    under the interpreter bf16 results are written in fp32 and rounded by torch."""
    return torch.float32 if INTERPRET and dtype == torch.bfloat16 else dtype


def _blocks(d: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D): ~4096 elements a program on the GPU (16-byte accesses, 4 warps); in the interpreter whole
    rows, 16 at a time (few programs, and the tests' small shapes still cross tile edges)."""
    if INTERPRET:
        return 16, triton.next_power_of_2(d)
    block_d = min(triton.next_power_of_2(d), 256)
    return max(1, 4096 // block_d), block_d


def gather_forward(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    """Checks, then one launch → (M·B, K, D) in the dtype x + pos would promote to (as the reference)."""
    idx = _check(x, idx, pos)
    _check_triton_device("masked_gather", x, idx, *([] if pos is None else [pos]))
    n, d = x.shape[1:]
    check_index_range(idx, n, "idx", "masked_gather")
    m, b, k = idx.shape
    idx = idx.contiguous()
    if x.stride(2) != 1:  # timm's PatchEmbed gives (B, N, D) strided (N·D, 1, N): gathering rows in place would touch
        x = x.contiguous()  # a 32-byte sector per element; one copy first costs less (the reference's reshape copies too)
    out_dtype = x.dtype if pos is None else torch.promote_types(x.dtype, pos.dtype)
    out = torch.empty(m * b, k, d, dtype=_kernel_dtype(out_dtype), device=x.device)
    rows = m * b * k
    if rows == 0:
        return out.to(out_dtype)
    block_r, block_d = _blocks(d)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(d, block_d))
    stride_xb = x.stride(0) if x.shape[0] == b else 0  # a batch-1 x is read by every row
    p = x if pos is None else pos  # a placeholder pointer when HAS_POS is off
    _gather_fwd_kernel[grid](x, p, idx, out, rows, k, b, n, d, stride_xb, x.stride(1), x.stride(2),
                             p.stride(-2), p.stride(-1), HAS_POS=pos is not None, BLOCK_R=block_r, BLOCK_D=block_d)
    return out.to(out_dtype)


def gather_backward(grad: torch.Tensor, idx: torch.Tensor, x_shape: torch.Size, x_dtype: torch.dtype,
                    pos_dtype: Optional[torch.dtype], x_grad: bool, pos_grad: bool):
    """(dx, dpos): scatter-adds of grad (M·B, K, D) at idx (M, B, K), accumulated in fp32 then cast to the inputs'
    dtypes; None for those not asked."""
    m, b, k = idx.shape
    n, d = x_shape[1:]
    grad = grad.contiguous()
    dx = torch.zeros(x_shape, dtype=torch.float32, device=grad.device) if x_grad else None
    dpos = torch.zeros(n, d, dtype=torch.float32, device=grad.device) if pos_grad else None
    rows = m * b * k
    if rows and (x_grad or pos_grad):
        block_r, block_d = _blocks(d)
        grid = (triton.cdiv(rows, block_r), triton.cdiv(d, block_d))
        dst = dx if x_grad else dpos  # placeholder pointers for the side switched off
        _gather_bwd_kernel[grid](grad, idx, dst, dpos if pos_grad else dst, rows, k, b, n, d,
                                 n * d if x_shape[0] == b else 0, X_GRAD=x_grad, POS_GRAD=pos_grad,
                                 BLOCK_R=block_r, BLOCK_D=block_d)
    return (None if dx is None else dx.to(x_dtype)), (None if dpos is None else dpos.to(pos_dtype))


def _check_predictor_tokens(x_ctx, ctx_idx, tgt_idx, pos, mask_token) -> None:
    op = "predictor_tokens"
    if x_ctx.dim() != 3 or ctx_idx.dim() != 2 or tgt_idx.dim() != 3 or x_ctx.shape[:2] != ctx_idx.shape \
            or tgt_idx.shape[1] != ctx_idx.shape[0]:
        raise ValueError(f"{op}: expected x_ctx (B, Kc, D), ctx_idx (B, Kc), tgt_idx (M, B, Kt); got "
                         f"{tuple(x_ctx.shape)}, {tuple(ctx_idx.shape)}, {tuple(tgt_idx.shape)}")
    for name, t in (("ctx_idx", ctx_idx), ("tgt_idx", tgt_idx)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{op}: {name} must be int32/int64, got {t.dtype}")
    d = x_ctx.shape[2]
    if pos.dim() != 2 or pos.shape[1] != d:
        raise ValueError(f"{op}: pos must be (N, {d}), got {tuple(pos.shape)}")
    if mask_token.numel() != d:
        raise ValueError(f"{op}: mask_token must hold {d} values (e.g. (1, 1, {d})), got {tuple(mask_token.shape)}")


def predictor_tokens_forward(x_ctx, ctx_idx, tgt_idx, pos, mask_token) -> torch.Tensor:
    """Checks, then one launch → (M·B, Kc + Kt, D) in the dtype x_ctx + pos + mask_token promote to."""
    _check_predictor_tokens(x_ctx, ctx_idx, tgt_idx, pos, mask_token)
    _check_triton_device("predictor_tokens", x_ctx, ctx_idx, tgt_idx, pos, mask_token)
    n, d = pos.shape
    check_index_range(ctx_idx, n, "ctx_idx", "predictor_tokens")
    check_index_range(tgt_idx, n, "tgt_idx", "predictor_tokens")
    m, b, kt = tgt_idx.shape
    kc = ctx_idx.shape[1]
    length = kc + kt
    dtype = torch.promote_types(torch.promote_types(x_ctx.dtype, pos.dtype), mask_token.dtype)
    out = torch.empty(m * b, length, d, dtype=_kernel_dtype(dtype), device=x_ctx.device)
    rows = m * b * length
    if rows == 0:
        return out.to(dtype)
    block_r, block_d = _blocks(d)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(d, block_d))
    _predictor_tokens_fwd_kernel[grid](x_ctx, ctx_idx.contiguous(), tgt_idx.contiguous(), pos,
                                       mask_token.reshape(-1).contiguous(), out, rows, length, kc, kt, b, n, d,
                                       x_ctx.stride(0), x_ctx.stride(1), x_ctx.stride(2), pos.stride(0), pos.stride(1),
                                       BLOCK_R=block_r, BLOCK_D=block_d)
    return out.to(dtype)


def predictor_ctx_grad(grad: torch.Tensor, m: int, b: int, kc: int, dtype: torch.dtype) -> torch.Tensor:
    """Σ over the masks of grad's context rows → (B, Kc, D) in dtype."""
    d = grad.shape[2]
    dx = torch.empty(b, kc, d, dtype=_kernel_dtype(dtype), device=grad.device)
    if b * kc:
        block_r, block_d = _blocks(d)
        grid = (triton.cdiv(b * kc, block_r), triton.cdiv(d, block_d))
        _predictor_ctx_grad_kernel[grid](grad, dx, m, b, grad.shape[1], kc, d, BLOCK_R=block_r, BLOCK_D=block_d)
    return dx.to(dtype)


# ------------------------------------------------------------------------------------------------ autograd Functions
class _MaskedGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, idx, pos):
        out = gather_forward(x, idx, pos)
        ctx.save_for_backward(idx.unsqueeze(0) if idx.dim() == 2 else idx)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.pos_dtype = None if pos is None else pos.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        dx, dpos = gather_backward(grad, idx.contiguous(), ctx.x_shape, ctx.x_dtype, ctx.pos_dtype,
                                   ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return dx, None, dpos


class _PredictorTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_ctx, ctx_idx, tgt_idx, pos, mask_token):
        out = predictor_tokens_forward(x_ctx, ctx_idx, tgt_idx, pos, mask_token)
        ctx.save_for_backward(ctx_idx, tgt_idx)
        ctx.x_dtype, ctx.pos_dtype, ctx.pos_shape = x_ctx.dtype, pos.dtype, pos.shape
        ctx.token_dtype, ctx.token_shape = mask_token.dtype, mask_token.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        ctx_idx, tgt_idx = ctx.saved_tensors
        m, b, kt = tgt_idx.shape
        kc = ctx_idx.shape[1]
        grad = grad.contiguous()
        dx = predictor_ctx_grad(grad, m, b, kc, ctx.x_dtype) if ctx.needs_input_grad[0] else None
        dtoken = None
        if ctx.needs_input_grad[4]:  # every target row received the same token: a plain reduction
            dtoken = torch.sum(grad[:, kc:], dim=(0, 1), dtype=torch.float32)
            dtoken = dtoken.to(ctx.token_dtype).reshape(ctx.token_shape)
        dpos = None
        if ctx.needs_input_grad[3]:  # the fixed sin-cos table never asks; kept for a learned one
            tokens = torch.cat([ctx_idx.long().expand(m, b, kc), tgt_idx.long()], dim=2)  # (M, B, Kc + Kt)
            _, dpos = gather_backward(grad, tokens, torch.Size((1, *ctx.pos_shape)), ctx.pos_dtype, ctx.pos_dtype,
                                      False, True)
        return dx, None, None, dpos, dtoken


# ------------------------------------------------------------------------------------------------------ public ops
def masked_gather_triton(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton gather (contract: masked_gather_reference); its backward scatter-adds into x and pos."""
    return _MaskedGather.apply(x, idx, pos)


def predictor_tokens_triton(x_ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, pos: torch.Tensor,
                            mask_token: torch.Tensor) -> torch.Tensor:
    """The predictor's input in one Triton pass (contract: predictor_tokens_reference)."""
    return _PredictorTokens.apply(x_ctx, ctx_idx, tgt_idx, pos, mask_token)


# ------------------------------------------------------------------------------------------------------ references
def masked_gather_reference(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, N, D) or (1, N, D) shared by the batch; idx (M, B, K) or (B, K); pos (N, D) → (M·B, K, D), mask-major."""
    idx = _check(x, idx, pos)
    check_index_range(idx, x.shape[1], "idx", "masked_gather")
    m, b, k = idx.shape
    n, d = x.shape[1:]
    rows = torch.arange(b, device=idx.device).view(1, b, 1) * (n if x.shape[0] == b else 0)
    flat = (idx.long() + rows).reshape(-1)  # (M·B·K,) rows of x viewed as (B·N, D)
    out = x.reshape(-1, d).index_select(0, flat)  # backward is index_add: repeated indices accumulate
    if pos is not None:
        out = out + pos.index_select(0, idx.reshape(-1).long())
    return out.view(m * b, k, d)


def predictor_tokens_reference(x_ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, pos: torch.Tensor,
                               mask_token: torch.Tensor) -> torch.Tensor:
    """The predictor's input, as the official repeat / gather / cat / add chain builds it.

    Args:
        x_ctx: (B, Kc, D) the context features already projected to the predictor width.
        ctx_idx: (B, Kc) their token indices; tgt_idx: (M, B, Kt) the target tokens of each of the M masks.
        pos: (N, D) the predictor's positional table; mask_token: D values, e.g. the (1, 1, D) parameter.
    Returns:
        (M·B, Kc + Kt, D), mask-major rows: row m·B + b is [x_ctx[b] + pos[ctx_idx[b]] ‖ token + pos[tgt_idx[m, b]]],
        in the dtype x_ctx, pos and mask_token promote to.
    """
    _check_predictor_tokens(x_ctx, ctx_idx, tgt_idx, pos, mask_token)
    check_index_range(ctx_idx, pos.shape[0], "ctx_idx", "predictor_tokens")
    check_index_range(tgt_idx, pos.shape[0], "tgt_idx", "predictor_tokens")
    m = tgt_idx.shape[0]
    x = x_ctx + masked_gather_reference(pos[None], ctx_idx)  # (B, Kc, D)
    targets = mask_token.reshape(1, 1, -1) + masked_gather_reference(pos[None], tgt_idx)  # (M·B, Kt, D)
    dtype = torch.promote_types(x.dtype, targets.dtype)
    return torch.cat([x.to(dtype).repeat(m, 1, 1), targets.to(dtype)], dim=1)


# ---------------------------------------------------------------------------------------------------- registration
# ViT-H/14 at 224 px with the official masks: 256 tokens of width 1280, ~69 context tokens, 4 targets of ~43 tokens;
# the predictor is 384 wide.
VITH14_TOKENS, VITH14_DIM, VITH14_PRED_DIM, VITH14_CONTEXT, VITH14_MASKS, VITH14_TARGET = 256, 1280, 384, 69, 4, 43


def compile_specs(quick: bool) -> list[CompileSpec]:
    """Every kernel × dtype × int32/int64 indices × D 96/384/1280; quick: bf16, int64, D 1280 (training shapes)."""
    grid = (["bf16"], ["i64"], [1280]) if quick else (["fp32", "fp16", "bf16"], ["i32", "i64"], [96, 384, 1280])
    specs = []
    for t, it, d in itertools.product(*grid):
        br, bd = _blocks(d)
        blocks, label = {"BLOCK_R": br, "BLOCK_D": bd}, f"{t} {it} D={d}"
        specs += [CompileSpec(_gather_fwd_kernel, {"X": "*" + t, "POS": "*" + t, "IDX": "*" + it, "OUT": "*" + t},
                              {"HAS_POS": has_pos, **blocks}, label=f"{label} pos={has_pos}") for has_pos in (False, True)]
        specs += [CompileSpec(_gather_bwd_kernel, {"GRAD": "*" + t, "IDX": "*" + it, "DX": "*fp32", "DPOS": "*fp32"},
                              {"X_GRAD": x_grad, "POS_GRAD": pos_grad, **blocks}, label=f"{label} {x_grad} {pos_grad}")
                  for x_grad, pos_grad in ((True, False), (False, True), (True, True))]
        specs.append(CompileSpec(_predictor_tokens_fwd_kernel, {"XC": "*" + t, "CTX_IDX": "*" + it, "TGT_IDX": "*" + it,
                                                                "POS": "*" + t, "TOKEN": "*" + t, "OUT": "*" + t},
                                 blocks, label=label))
        specs.append(CompileSpec(_predictor_ctx_grad_kernel, {"GRAD": "*" + t, "DX": "*" + t}, blocks, label=label))
    return specs


def bench_cases(device: torch.device, b: int) -> list[BenchCase]:
    """The model's three gathers at ViT-H/14 (bf16 tokens, fp32 tables); work = the bytes each must read and write."""
    n, d, dp, kc, m, kt = VITH14_TOKENS, VITH14_DIM, VITH14_PRED_DIM, VITH14_CONTEXT, VITH14_MASKS, VITH14_TARGET
    bf16 = torch.bfloat16
    x = torch.randn(b, n, d, dtype=bf16, device=device, requires_grad=True)
    x_patch = torch.randn(b, d, n, dtype=bf16, device=device).transpose(1, 2).requires_grad_()
    pos = torch.randn(n, d, device=device)
    ctx_idx = torch.stack([torch.randperm(n, device=device)[:kc].sort().values for _ in range(b)])  # (B, Kc)
    tgt_idx = torch.stack([torch.stack([torch.randperm(n, device=device)[:kt] for _ in range(b)]) for _ in range(m)])
    h = torch.randn(b, n, d, device=device)  # target features: fp32 after the no-affine LayerNorm
    x_ctx = torch.randn(b, kc, dp, dtype=bf16, device=device, requires_grad=True)
    ppos = torch.randn(n, dp, device=device)
    token = torch.randn(1, 1, dp, device=device, requires_grad=True)
    gather = {name: fns["masked_gather"] for name, fns in IMPLEMENTATIONS.items()}
    tokens = {name: fns["predictor_tokens"] for name, fns in IMPLEMENTATIONS.items()}
    rows_out = m * b * (kc + kt)
    # encoder input: read x rows (2 B) + pos rows (4 B), write fp32 tokens; backward: read the fp32 gradient, write
    # the whole bf16 dx (every token: the unkept ones are zeros)
    encoder_work = (b * kc * d * (2 + 4 + 4), b * kc * d * 4 + b * n * d * 2)
    return [
        BenchCase("encoder input", gather, [x, ctx_idx, pos], [x], encoder_work, "B"),
        # the same from timm's PatchEmbed layout, (B, N, D) strided (N·D, 1, N): both paths copy x first
        BenchCase("encoder input, PatchEmbed layout", gather, [x_patch, ctx_idx, pos], [x_patch], encoder_work, "B"),
        BenchCase("target selection", gather, [h, tgt_idx], None, (m * b * kt * d * (4 + 4), 0), "B"),
        # predictor input: read x_ctx once per mask row (bf16) + pos rows (fp32), write fp32; backward: read the
        # gradient, write dx_ctx (bf16) and the token's gradient
        BenchCase("predictor input", tokens, [x_ctx, ctx_idx, tgt_idx, ppos, token], [x_ctx, token],
                  (rows_out * dp * (4 + 4) + m * b * kc * dp * 2, rows_out * dp * 4 + b * kc * dp * 2), "B"),
    ]


IMPLEMENTATIONS = {
    "triton": {"masked_gather": masked_gather_triton, "predictor_tokens": predictor_tokens_triton},
    "reference": {"masked_gather": masked_gather_reference, "predictor_tokens": predictor_tokens_reference},
}
# auto: index_select (the reference) until the Triton gather is measured at >= 80% of copy bandwidth on a GPU.
KERNEL = KernelOp("gather", IMPLEMENTATIONS, reference="reference", auto={"cuda": "reference", "cpu": "reference"},
                  cuda_only=frozenset({"triton"}), compile_specs=compile_specs, bench_cases=bench_cases)
