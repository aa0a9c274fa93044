"""Multi-head self-attention without a mask, softmax(q kᵀ / sqrt(d)) v: a Triton flash attention (forward and
backward), PyTorch's SDPA, and the explicit-softmax reference.

The Triton kernels follow the Triton tutorial 06-fused-attention (FlashAttention-2): the forward keeps a running
max and sum per query row and stores the row's log-sum-exp (base 2); the backward recomputes the probabilities from it,
one kernel for dK/dV (a key block per program, looping over the queries) and one for dQ (a query block per program,
looping over the keys), so no atomics. Any sequence length (the last block is masked) and any head dim up to 256
(the block is padded to the next power of 2 and masked: 24 → 32, 80 and 88 → 128, so d = 80 pays for 128 columns
of q kᵀ and p v: a cost the GPU benchmark shows). fp32 accumulation whatever the input dtype; fp32 inputs use IEEE
fp32 dots (not TF32) so that they match the reference. Under Triton's interpreter (tests) each tile is upcast to fp32
right after its load and bf16 results are rounded by torch, since the interpreter's bf16 arithmetic and stores are
wrong.

Layout (style.md): the @triton.jit kernels, the launch functions with their checks, the autograd Function, the
public ops, the reference. Nothing launches at import, so this module imports on a machine without CUDA.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

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


# ------------------------------------------------------------------------------------------------------ reference
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention, as the official I-JEPA code computes it."""
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    return attn.softmax(dim=-1) @ v

