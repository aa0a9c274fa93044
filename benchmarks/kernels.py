"""Kernel suite: each implementation of the gather and attention ops, the plain-PyTorch reference timed in the same run.

On CUDA, at the ViT-H/14 shapes of issue 9 (B = 128, bf16 under the model's mixed precision):
- gather forward and forward+backward in GB/s of useful traffic (bytes the op must read and write), against the
  device-to-device copy bandwidth measured in the same run (target: >= 80%): encoder input (patch tokens + pos at
  ~69 context tokens of 256, D = 1280), target selection (4 masks of ~43 tokens, forward only) and the predictor's
  input (D = 384, 4 masks);
- attention forward and forward+backward TFLOP/s at (N, d) = (256, 80), (70, 80), (113, 24), H = 16: Triton,
  every SDPA backend (flash, cuDNN, efficient, and SDPA's own pick) and the explicit-softmax reference.
On CPU: the reference against SDPA at the config's small shapes; the Triton kernels need a GPU (the interpreter
is for tests), so they are not timed there.
"""
from __future__ import annotations

import logging

import torch

import kernels
from benchmarks.common import time_call

logger = logging.getLogger(__name__)

GPU_BATCH, GPU_HEADS, GPU_DIM, GPU_PRED_DIM, GPU_TOKENS = 128, 16, 1280, 384, 256
GPU_CONTEXT, GPU_MASKS, GPU_TARGET = 69, 4, 43
GPU_ATTENTION_SHAPES = [(256, 80), (70, 80), (113, 24)]  # (N, head dim): all tokens, context, predictor


def attention_flops(b: int, h: int, n: int, d: int, with_backward: bool = False) -> float:
    """Matmul FLOPs: 4·B·H·N²·d forward (q kᵀ and p v); the backward adds 2.5× that (recompute + 4 matmuls)."""
    fwd = 4.0 * b * h * n * n * d
    return fwd * 3.5 if with_backward else fwd


def _seconds(fn, device: torch.device, repeat: int) -> float:
    """Median seconds per call; on CUDA each timed call ends in a synchronize, after warm-up (autotuning included)."""
    if device.type == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
        return time_call(call, repeat=repeat, warmup=3)["median_s"]
    return time_call(fn, repeat=repeat, warmup=1)["median_s"]


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / _seconds(lambda: dst.copy_(src), device, repeat=20)


def _fwd_bwd(op, inputs, leaves):
    """A callable running op forward then backward with a fixed output gradient into `leaves`."""
    out = op(*inputs)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(op(*inputs), leaves, grad)


def _qkv(b: int, h: int, n: int, d: int, dtype, device, grad: bool):
    """q, k, v as the model makes them: (B, H, N, d) views of one packed (B, N, 3·H·d) projection."""
    packed = torch.randn(b, n, 3, h, d, dtype=dtype, device=device).requires_grad_(grad)
    return packed, packed.permute(2, 0, 3, 1, 4).unbind(0)


def _sdpa_backends() -> dict:
    """SDPA with each CUDA backend forced, plus SDPA's own pick."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return kernels.attention_sdpa(q, k, v)
        return run

    return {"sdpa": kernels.attention_sdpa, "sdpa-flash": forced(SDPBackend.FLASH_ATTENTION),
            "sdpa-cudnn": forced(SDPBackend.CUDNN_ATTENTION), "sdpa-efficient": forced(SDPBackend.EFFICIENT_ATTENTION)}


def bench_attention(shapes, b: int, h: int, dtype, device, impls: dict, repeat: int) -> list[dict]:
    rows = []
    for n, d in shapes:
        for name, op in impls.items():
            row = {"op": "attention", "impl": name, "B": b, "H": h, "N": n, "d": d, "dtype": str(dtype)}
            try:
                _, qkv = _qkv(b, h, n, d, dtype, device, grad=False)
                fwd = _seconds(lambda: op(*qkv), device, repeat)
                packed, qkv = _qkv(b, h, n, d, dtype, device, grad=True)
                both = _seconds(_fwd_bwd(op, qkv, [packed]), device, repeat)
            except RuntimeError as err:  # an SDPA backend that does not take this shape, or out of memory
                row.update(error=str(err).splitlines()[0][:120])
                rows.append(row)
                continue
            row.update(fwd_ms=fwd * 1e3, fwd_bwd_ms=both * 1e3,
                       fwd_tflops=attention_flops(b, h, n, d) / fwd / 1e12,
                       fwd_bwd_tflops=attention_flops(b, h, n, d, with_backward=True) / both / 1e12)
            rows.append(row)
    return rows


def _gather_cases(b: int, device):
    """(name, op per impl, inputs, leaves, forward bytes, backward bytes): useful traffic, bf16 tokens, fp32 tables."""
    n, d, dp, kc, m, kt = GPU_TOKENS, GPU_DIM, GPU_PRED_DIM, GPU_CONTEXT, GPU_MASKS, GPU_TARGET
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
    gather = {"triton": kernels.masked_gather_triton, "reference": kernels.masked_gather_reference}
    tokens = {"triton": kernels.predictor_tokens_triton, "reference": kernels.predictor_tokens_reference}
    rows_out = m * b * (kc + kt)
    return [
        # encoder input: read x rows (2 B) + pos rows (4 B), write fp32 tokens; backward: read the fp32 gradient,
        # write the whole bf16 dx (every token: the unkept ones are zeros)
        ("encoder input", gather, [x, ctx_idx, pos], [x], b * kc * d * (2 + 4 + 4), b * kc * d * 4 + b * n * d * 2),
        # the same from timm's PatchEmbed layout, (B, N, D) strided (N·D, 1, N): both paths copy x first
        ("encoder input, PatchEmbed layout", gather, [x_patch, ctx_idx, pos], [x_patch], b * kc * d * (2 + 4 + 4),
         b * kc * d * 4 + b * n * d * 2),
        ("target selection", gather, [h, tgt_idx], None, m * b * kt * d * (4 + 4), 0),
        # predictor input: read x_ctx once per mask row (bf16) + pos rows (fp32), write fp32; backward: read the
        # gradient, write dx_ctx (bf16) and the token's gradient
        ("predictor input", tokens, [x_ctx, ctx_idx, tgt_idx, ppos, token], [x_ctx, token],
         rows_out * dp * (4 + 4) + m * b * kc * dp * 2, rows_out * dp * 4 + b * kc * dp * 2),
    ]


def bench_gather(b: int, device, copy_bps: float, repeat: int) -> list[dict]:
    rows = []
    for case, impls, inputs, leaves, fwd_bytes, bwd_bytes in _gather_cases(b, device):
        for name, op in impls.items():
            fwd = _seconds(lambda: op(*inputs), device, repeat)
            row = {"op": case, "impl": name, "B": b, "fwd_ms": fwd * 1e3, "fwd_GBps": fwd_bytes / fwd / 1e9,
                   "fwd_of_copy": fwd_bytes / fwd / copy_bps}
            if leaves:
                both = _seconds(_fwd_bwd(op, inputs, leaves), device, repeat)
                bwd = max(both - fwd, 1e-9)
                row.update(fwd_bwd_ms=both * 1e3, bwd_GBps=bwd_bytes / bwd / 1e9,
                           bwd_of_copy=bwd_bytes / bwd / copy_bps)
            rows.append(row)
    return rows


def _print_table(rows: list[dict], metrics: list[str], key: tuple[str, ...]) -> None:
    """One line per row; each metric also as a ratio to the reference row of the same case."""
    ref = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "reference"}
    for r in rows:
        case = " ".join(f"{k}={r[k]}" for k in key)
        if "error" in r:
            print(f"{case:44s} {r['impl']:15s} n/a: {r['error']}")
            continue
        base = ref.get(tuple(r[k] for k in key), {})
        cells = []
        for m in metrics:
            if m in r:
                ratio = f" ({r[m] / base[m]:.2f}x ref)" if m in base and base[m] else ""
                cells.append(f"{m} {r[m]:9.3f}{ratio}")
        print(f"{case:44s} {r['impl']:15s} " + " | ".join(cells))


def _run_cuda(device: torch.device) -> dict:
    copy_bps = copy_bandwidth(device)
    print(f"device copy bandwidth (read + write): {copy_bps / 1e9:.0f} GB/s")
    gather = bench_gather(GPU_BATCH, device, copy_bps, repeat=20)
    print("\nmasked gather (useful bytes; x_of_copy = fraction of the copy bandwidth, target >= 0.80)")
    _print_table(gather, ["fwd_ms", "fwd_GBps", "fwd_of_copy", "fwd_bwd_ms", "bwd_GBps", "bwd_of_copy"], ("op",))
    impls = {"triton": kernels.attention_triton, **_sdpa_backends(), "reference": kernels.attention_reference}
    attention = bench_attention(GPU_ATTENTION_SHAPES, GPU_BATCH, GPU_HEADS, torch.bfloat16, device, impls, repeat=10)
    print(f"\nattention, bf16, B={GPU_BATCH}, H={GPU_HEADS} (target: Triton >= the best SDPA backend)")
    _print_table(attention, ["fwd_ms", "fwd_tflops", "fwd_bwd_ms", "fwd_bwd_tflops"], ("N", "d"))
    return {"copy_GBps": copy_bps / 1e9, "gather": gather, "attention": attention}


def _run_cpu(cfg) -> dict:
    from config import grid_size, model_size

    dim, _, heads, _ = model_size(cfg)
    n = grid_size(cfg)[0] * grid_size(cfg)[1]
    b = min(cfg.data.batch_size, 8)
    pred_heads = cfg.model.pred_num_heads or heads
    shapes = [(n, dim // heads), (max(n // 4, 4), dim // heads)]
    rows = bench_attention(shapes, b, heads, torch.float32, torch.device("cpu"),
                           {"sdpa": kernels.attention_sdpa, "reference": kernels.attention_reference}, repeat=10)
    rows += bench_attention([(n, cfg.model.pred_emb_dim // pred_heads)], b, pred_heads, torch.float32,
                            torch.device("cpu"), {"sdpa": kernels.attention_sdpa,
                                                  "reference": kernels.attention_reference}, repeat=10)
    print(f"attention, fp32, B={b}, CPU: SDPA against the explicit softmax")
    _print_table(rows, ["fwd_ms", "fwd_bwd_ms"], ("H", "N", "d"))
    print("Triton kernels: not timed, they need a CUDA GPU (on the CPU Triton only interprets, for the tests)")
    return {"attention": rows, "triton": "needs a CUDA GPU"}


def run(cfg) -> dict:
    """Times every implementation of each op on this machine's device; returns the rows printed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = _run_cuda(device) if device.type == "cuda" else _run_cpu(cfg)
    result["auto"] = kernels.AUTO[device.type]
    print(f"\nauto picks on {device.type}: {result['auto']} (kernels/__init__.py AUTO)")
    return result
