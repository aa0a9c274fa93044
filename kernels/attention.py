"""Multi-head self-attention without a mask, softmax(q kᵀ / sqrt(d)) v: a Triton flash attention (forward and
backward, FlashAttention-2 as in Triton's tutorial 06), PyTorch's SDPA, and the explicit-softmax reference.

Layout (style): the @triton.jit kernels, the launch functions with their checks, the autograd Function, the public
ops, the reference, then the registration (KERNEL). Nothing launches at import, so this imports without CUDA. The
kernels' design (head-dim padding, precision, the interpreter's bf16 workarounds) is in docs/kernels.md.
"""
from __future__ import annotations

import itertools
import os
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.registry import BenchCase, CompileSpec, KernelOp

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once: @triton.jit picks its mode at definition
LOG2E = 1.4426950408889634  # 1 / ln 2: the kernels work in base 2 (exp2)


def _configs(tiles: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) → Configs; the interpreter gets one (it cannot time configs)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in tiles]


# Hopper candidates (H100/H200), tuned once per (N bucket, head dim): the model's sequence lengths vary every step
# (mask sizes), so the key is the next power of 2 of N, not N itself.
FWD_CONFIGS = _configs([(64, 64, 4, 3), (64, 32, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3), (128, 64, 4, 2),
                        (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 2)])
BWD_CONFIGS = _configs([(32, 64, 4, 2), (32, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 3), (32, 128, 8, 2),
                        (64, 128, 8, 2), (16, 64, 4, 3), (64, 32, 4, 3)])


# ---------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, n_rows, n_cols, UPCAST: tl.constexpr):
    """(rows × cols) tile, zero outside (n_rows, n_cols); upcast to fp32 in the interpreter (its bf16 is wrong)."""
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    tile = tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _store_tile(base, tile, rows, cols, stride_r, stride_c, n_rows, n_cols):
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    tl.store(base + rows[:, None] * stride_r + cols[None, :] * stride_c, tile.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _program_ids(N_CTX, H, BLOCK: tl.constexpr):
    """One flat grid (no 65,535 limit on B·H); the blocks of one (batch, head) are neighbours, sharing K/V in L2."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N_CTX, BLOCK)
    bh = pid // n_blocks
    return pid % n_blocks, bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.autotune(configs=FWD_CONFIGS, key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, qk_scale, N_CTX, N_BUCKET, H,
                     sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, bh, b, h = _program_ids(N_CTX, H, BLOCK_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    K += b * skb + h * skh
    V += b * svb + h * svh
    q = _load_tile(Q + b * sqb + h * sqh, rows, offs_d, sqn, sqd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(logit − max)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start_n in range(0, N_CTX, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(K, cols, offs_d, skn, skd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
        v = _load_tile(V, cols, offs_d, svn, svd, N_CTX, HEAD_DIM, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        s = tl.where((cols < N_CTX)[None, :], s, float("-inf"))  # keys past N (every block has one key < N)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    tl.store(LSE + bh.to(tl.int64) * N_CTX + rows, m_i + tl.math.log2(l_i), mask=rows < N_CTX)
    _store_tile(O + b * sob + h * soh, acc / l_i[:, None], rows, offs_d, son, sod, N_CTX, HEAD_DIM)


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, N_CTX, H, sob, soh, son, sod, sdb, sdh, sdn, sdd,
                           HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(o ∘ do), the softmax-backward term every key block needs."""
    pid_m, bh, b, h = _program_ids(N_CTX, H, BLOCK_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    o = _load_tile(O + b * sob + h * soh, rows, offs_d, son, sod, N_CTX, HEAD_DIM, True)
    do = _load_tile(DO + b * sdb + h * sdh, rows, offs_d, sdn, sdd, N_CTX, HEAD_DIM, True)
    tl.store(DELTA + bh.to(tl.int64) * N_CTX + rows, tl.sum(o * do, 1), mask=rows < N_CTX)


@triton.autotune(configs=BWD_CONFIGS, key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, sm_scale, qk_scale, N_CTX, N_BUCKET, H,
                          sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                          sgb, sgh, sgn, sgd,
                          HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dV = Pᵀ dO and dK = scale · dSᵀ Q for one key block (DK, DV share the strides sg*)."""
    pid_n, bh, b, h = _program_ids(N_CTX, H, BLOCK_N)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    Q += b * sqb + h * sqh
    DO += b * sdb + h * sdh
    LSE += bh.to(tl.int64) * N_CTX
    DELTA += bh.to(tl.int64) * N_CTX
    k = _load_tile(K + b * skb + h * skh, keys, offs_d, skn, skd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
    v = _load_tile(V + b * svb + h * svh, keys, offs_d, svn, svd, N_CTX, HEAD_DIM, UPCAST)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for start_m in range(0, N_CTX, BLOCK_M):
        rows = start_m + offs_m
        q = _load_tile(Q, rows, offs_d, sqn, sqd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
        do = _load_tile(DO, rows, offs_d, sdn, sdd, N_CTX, HEAD_DIM, UPCAST)
        lse = tl.load(LSE + rows, mask=rows < N_CTX, other=0.0)
        delta = tl.load(DELTA + rows, mask=rows < N_CTX, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.where((rows < N_CTX)[None, :], tl.math.exp2(s_t - lse[None, :]), 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    _store_tile(DK + b * sgb + h * sgh, dk * sm_scale, keys, offs_d, sgn, sgd, N_CTX, HEAD_DIM)
    _store_tile(DV + b * sgb + h * sgh, dv, keys, offs_d, sgn, sgd, N_CTX, HEAD_DIM)


@triton.autotune(configs=BWD_CONFIGS, key=["N_BUCKET", "HEAD_DIM"])
@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, sm_scale, qk_scale, N_CTX, N_BUCKET, H,
                        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                        sgb, sgh, sgn, sgd,
                        HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ = scale · dS K for one query block."""
    pid_m, bh, b, h = _program_ids(N_CTX, H, BLOCK_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    K += b * skb + h * skh
    V += b * svb + h * svh
    q = _load_tile(Q + b * sqb + h * sqh, rows, offs_d, sqn, sqd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_M, D_PAD)
    do = _load_tile(DO + b * sdb + h * sdh, rows, offs_d, sdn, sdd, N_CTX, HEAD_DIM, UPCAST)
    lse = tl.load(LSE + bh.to(tl.int64) * N_CTX + rows, mask=rows < N_CTX, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * N_CTX + rows, mask=rows < N_CTX, other=0.0)
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start_n in range(0, N_CTX, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(K, cols, offs_d, skn, skd, N_CTX, HEAD_DIM, UPCAST)  # (BLOCK_N, D_PAD)
        v = _load_tile(V, cols, offs_d, svn, svd, N_CTX, HEAD_DIM, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.where((cols < N_CTX)[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    _store_tile(DQ + b * sgb + h * sgh, dq * sm_scale, rows, offs_d, sgn, sgd, N_CTX, HEAD_DIM)


# --------------------------------------------------------------------------------------------------- launch + checks
def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"attention: q, k, v must all be (B, H, N, d) of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention: q, k, v must share one dtype among fp32, fp16, bf16, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"attention: q, k, v are on {q.device}, {k.device}, {v.device}")
    if not q.is_cuda and not INTERPRET:
        raise RuntimeError(f"attention: the Triton kernels need CUDA tensors (got {q.device}); on the CPU use "
                           f"kernels.configure(attention='sdpa' or 'reference'), or set TRITON_INTERPRET=1 before "
                           f"importing kernels, as the tests do")
    if not 0 < q.shape[-1] <= 256:
        raise ValueError(f"attention: head dim must be 1..256 for the Triton kernels, got {q.shape[-1]}")


def _bhnd_empty(q: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) stored as (B, N, H, d): the caller's transpose(1, 2).reshape(B, N, H·d) is then free.

    Under the interpreter a bf16 result is written in fp32 (its fp32 → bf16 store truncates where the GPU rounds to
    nearest) and rounded by torch afterwards (`.to(q.dtype)` keeps the layout)."""
    b, h, n, d = q.shape
    dtype = torch.float32 if INTERPRET and q.dtype == torch.bfloat16 else q.dtype
    return torch.empty(b, n, h, d, dtype=dtype, device=q.device).transpose(1, 2)


def _meta(q: torch.Tensor) -> dict:
    d = q.shape[-1]
    return dict(HEAD_DIM=d, D_PAD=max(16, triton.next_power_of_2(d)), UPCAST=INTERPRET,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")  # tf32 is ignored for fp16/bf16 inputs


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks, then the forward kernel → (o (B, H, N, d) in q's dtype, lse (B·H, N) fp32, base 2)."""
    _check(q, k, v)
    b, h, n, d = q.shape
    o = _bhnd_empty(q)
    lse = torch.empty(b * h, n, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o.to(q.dtype), lse
    scale = d ** -0.5
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]) * b * h,)  # noqa: E731
    _attn_fwd_kernel[grid](q, k, v, o, lse, scale * LOG2E, n, triton.next_power_of_2(n), h,
                           *q.stride(), *k.stride(), *v.stride(), *o.stride(), **_meta(q))
    return o.to(q.dtype), lse


def attention_backward(q, k, v, o, lse, do) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the saved forward: delta = rowsum(o ∘ do), then the dK/dV and the dQ kernels."""
    b, h, n, d = q.shape
    dq, dk, dv = _bhnd_empty(q), _bhnd_empty(q), _bhnd_empty(q)
    if dq.numel() == 0:
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
    meta = _meta(q)
    delta = torch.empty_like(lse)
    block = 32 if INTERPRET else 64
    _attn_bwd_delta_kernel[(triton.cdiv(n, block) * b * h,)](o, do, delta, n, h, *o.stride(), *do.stride(),
                                                             HEAD_DIM=d, D_PAD=meta["D_PAD"], BLOCK_M=block)
    scale = d ** -0.5
    common = (lse, delta, scale, scale * LOG2E, n, triton.next_power_of_2(n), h,
              *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride())
    grid_n = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]) * b * h,)  # noqa: E731
    _attn_bwd_dkdv_kernel[grid_n](q, k, v, do, dk, dv, *common, **meta)
    grid_m = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]) * b * h,)  # noqa: E731
    _attn_bwd_dq_kernel[grid_m](q, k, v, do, dq, *common, **meta)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


# ------------------------------------------------------------------------------------------------ autograd Function
class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o, lse = attention_forward(q, k, v)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, do):
        return attention_backward(*ctx.saved_tensors, do)


# ------------------------------------------------------------------------------------------------------ public ops
def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d), any strides → (B, H, N, d): the Triton flash attention, scale d**-0.5."""
    return _FlashAttention.apply(q, k, v)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d) → (B, H, N, d). PyTorch's SDPA picks its fastest backend for the device."""
    return F.scaled_dot_product_attention(q, k, v)


CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_sdpa_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d) → (B, H, N, d). SDPA with cuDNN's backend tried first, then SDPA's usual order (a device or
    shape cuDNN does not take falls through: the CPU runs SDPA's CPU kernel). On Hopper at ViT-H's shapes cuDNN's
    kernels are faster than flash, SDPA's own pick (docs/kernels.md)."""
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)


# ------------------------------------------------------------------------------------------------------ reference
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention, as the official I-JEPA code computes it."""
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    return attn.softmax(dim=-1) @ v


# ---------------------------------------------------------------------------------------------------- registration
PRECISION = {"fp32": "ieee", "fp16": "tf32", "bf16": "tf32"}  # dtype → the kernels' PRECISION constexpr
VITH14_HEADS = 16
VITH14_SHAPES = [(256, 80), (70, 80), (113, 24)]  # (N, head dim) at ViT-H/14: all tokens, context, predictor


def compile_specs(quick: bool) -> list[CompileSpec]:
    """Every kernel × autotune config × dtype × head dim 24/64/80/128; quick: bf16, the first config, d 80 and 24."""
    dtypes, dims = (["bf16"], [80, 24]) if quick else (list(PRECISION), [24, 64, 80, 128])
    specs = []
    for t, d in itertools.product(dtypes, dims):
        meta = {"HEAD_DIM": d, "D_PAD": max(16, triton.next_power_of_2(d)), "UPCAST": False, "PRECISION": PRECISION[t]}
        ptr = {**{n: "*" + t for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}, "LSE": "*fp32", "DELTA": "*fp32"}
        for configs, kernel in ((FWD_CONFIGS, _attn_fwd_kernel), (BWD_CONFIGS, _attn_bwd_dkdv_kernel),
                                (BWD_CONFIGS, _attn_bwd_dq_kernel)):
            specs += [CompileSpec(kernel, ptr, {**meta, **c.kwargs}, c.num_warps, c.num_stages, f"{t} d={d} {c.kwargs}")
                      for c in (configs[:1] if quick else configs)]
        specs.append(CompileSpec(_attn_bwd_delta_kernel, ptr, {"HEAD_DIM": d, "D_PAD": meta["D_PAD"], "BLOCK_M": 64},
                                 label=f"{t} d={d}"))
    return specs


def attention_flops(b: int, h: int, n: int, d: int) -> tuple[float, float]:
    """Matmul FLOPs (forward, backward): 4·B·H·N²·d (q kᵀ and p v); the backward is 2.5× that (recompute + 4)."""
    forward = 4.0 * b * h * n * n * d
    return forward, 2.5 * forward


def sdpa_backends() -> dict[str, Callable]:
    """SDPA with each CUDA backend forced (the kernels suite times every one beside SDPA's own pick)."""
    def forced(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return attention_sdpa(q, k, v)
        return run

    return {"sdpa forced flash": forced(SDPBackend.FLASH_ATTENTION),
            "sdpa forced cudnn": forced(SDPBackend.CUDNN_ATTENTION),
            "sdpa forced efficient": forced(SDPBackend.EFFICIENT_ATTENTION)}


def bench_cases(device: torch.device, batch: int) -> list[BenchCase]:
    """ViT-H/14's attention shapes, q, k, v as the model makes them: views of one packed (B, N, 3·H·d) projection;
    bf16 on CUDA (every SDPA backend forced as well), fp32 on the CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ops = {name: fns["attention"] for name, fns in IMPLEMENTATIONS.items()}
    if device.type == "cuda":
        ops = {**ops, **sdpa_backends()}
    cases = []
    for n, d in VITH14_SHAPES:
        packed = torch.randn(batch, n, 3, VITH14_HEADS, d, dtype=dtype, device=device, requires_grad=True)
        cases.append(BenchCase(f"attention N={n} d={d} H={VITH14_HEADS}", ops, list(packed.permute(2, 0, 3, 1, 4)),
                               [packed], attention_flops(batch, VITH14_HEADS, n, d), "FLOP"))
    return cases


IMPLEMENTATIONS = {"triton": {"attention": attention_triton}, "sdpa": {"attention": attention_sdpa},
                   "sdpa-cudnn": {"attention": attention_sdpa_cudnn}, "reference": {"attention": attention_reference}}
# auto on a GPU: SDPA until the Triton kernel is measured at or above the best SDPA backend there. On the CPU: the
# explicit softmax, because the CPU recipe trains in bf16, where SDPA's CPU kernel takes 3.4-4.5x as long forward +
# backward at the tiny config's shapes (2-core x86 with AVX512-BF16, torch 2.14; in fp32 SDPA is 1.3-1.5x faster).
KERNEL = KernelOp("attention", IMPLEMENTATIONS, reference="reference", auto={"cuda": "sdpa", "cpu": "reference"},
                  cuda_only=frozenset({"triton"}), compile_specs=compile_specs, bench_cases=bench_cases)
