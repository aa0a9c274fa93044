"""Compiles every Triton kernel of kernels/ to a cubin for a CUDA architecture, without a GPU: catches front-end,
lowering and ptxas errors that Triton's interpreter (the CPU tests) never sees.

    python bench/aot_compile_check.py [--sm 90] [--quick]

All attention kernels × every autotune config × fp32/fp16/bf16 × head dims 24/64/80/128, and all gather kernels ×
dtypes × int32/int64 indices × D 96/384/1280 (about 430 compilations, 10+ minutes on 2 cores); --quick: bf16, the
first autotune config, head dims 80 and 24, D 1280, int64 (the training shapes; about a minute). Exit 1 on any failure.
Run without TRITON_INTERPRET (it would make the kernels interpreter objects).
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp32": "ieee", "fp16": "tf32", "bf16": "tf32"}  # dtype → the kernels' PRECISION constexpr


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sm", type=int, default=90, help="CUDA compute capability × 10 (90: Hopper)")
    p.add_argument("--quick", action="store_true", help="bf16 training shapes only, first autotune config")
    return p.parse_args(argv)


class Compiler:
    def __init__(self, sm: int):
        import triton
        from triton.backends.compiler import GPUTarget

        self.triton, self.target = triton, GPUTarget("cuda", sm, 32)
        self.ok, self.failures = 0, []

    def __call__(self, kernel, pointers: dict, consts: dict, num_warps: int = 4, num_stages: int = 3,
                 label: str = "") -> None:
        """Compiles `kernel` with `pointers` ({arg: "*bf16"...}), `consts` (constexprs); other args i32, or fp32 when
        they are scales."""
        from triton.compiler import ASTSource

        fn = kernel.fn if isinstance(kernel, self.triton.runtime.Autotuner) else kernel
        sig = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if n.endswith("scale") else "i32")
               for n in fn.arg_names}
        try:
            out = self.triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(consts)), target=self.target,
                                      options={"num_warps": num_warps, "num_stages": num_stages})
            if "cubin" not in out.asm:
                raise RuntimeError(f"no cubin, only {list(out.asm)}")
            self.ok += 1
        except Exception as err:  # reported with the kernel and its specialisation; the run exits 1
            self.failures.append(f"{fn.__name__} | {label} | {err!r}"[:2000])


def attention_kernels(compile_, dtypes, head_dims, quick: bool) -> None:
    import triton

    A = importlib.import_module("kernels.attention")  # the module: kernels.attention is also the public op

    for t, d in itertools.product(dtypes, head_dims):
        meta = {"HEAD_DIM": d, "D_PAD": max(16, triton.next_power_of_2(d)), "UPCAST": False,
                "PRECISION": DTYPES[t]}
        ptr = {**{n: "*" + t for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}, "LSE": "*fp32",
               "DELTA": "*fp32"}
        for configs, kernel in ((A.FWD_CONFIGS, A._attn_fwd_kernel), (A.BWD_CONFIGS, A._attn_bwd_dkdv_kernel),
                                (A.BWD_CONFIGS, A._attn_bwd_dq_kernel)):
            for c in configs[:1] if quick else configs:
                compile_(kernel, ptr, {**meta, **c.kwargs}, c.num_warps, c.num_stages, f"{t} d={d} {c.kwargs}")
        compile_(A._attn_bwd_delta_kernel, ptr, {"HEAD_DIM": d, "D_PAD": meta["D_PAD"], "BLOCK_M": 64},
                 label=f"{t} d={d}")


def gather_kernels(compile_, dtypes, index_types, dims) -> None:
    G = importlib.import_module("kernels.masked_gather")

    for t, it, d in itertools.product(dtypes, index_types, dims):
        br, bd = G._blocks(d)
        blocks, label = {"BLOCK_R": br, "BLOCK_D": bd}, f"{t} {it} D={d}"
        for has_pos in (False, True):
            compile_(G._gather_fwd_kernel, {"X": "*" + t, "POS": "*" + t, "IDX": "*" + it, "OUT": "*" + t},
                     {"HAS_POS": has_pos, **blocks}, label=f"{label} pos={has_pos}")
        for x_grad, pos_grad in ((True, False), (False, True), (True, True)):
            compile_(G._gather_bwd_kernel, {"GRAD": "*" + t, "IDX": "*" + it, "DX": "*fp32", "DPOS": "*fp32"},
                     {"X_GRAD": x_grad, "POS_GRAD": pos_grad, **blocks}, label=f"{label} {x_grad} {pos_grad}")
        compile_(G._predictor_tokens_fwd_kernel, {"XC": "*" + t, "CTX_IDX": "*" + it, "TGT_IDX": "*" + it,
                                                  "POS": "*" + t, "TOKEN": "*" + t, "OUT": "*" + t}, blocks,
                 label=label)
        compile_(G._predictor_ctx_grad_kernel, {"GRAD": "*" + t, "DX": "*" + t}, blocks, label=label)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: the interpreter replaces the kernels this script compiles",
              file=sys.stderr)
        return 2
    import torch
    import triton

    compile_, started = Compiler(args.sm), time.perf_counter()
    if args.quick:
        attention_kernels(compile_, ["bf16"], [80, 24], quick=True)
        gather_kernels(compile_, ["bf16"], ["i64"], [1280])
    else:
        attention_kernels(compile_, list(DTYPES), [24, 64, 80, 128], quick=False)
        gather_kernels(compile_, list(DTYPES), ["i32", "i64"], [96, 384, 1280])
    for failure in compile_.failures[:20]:
        print("FAIL", failure)
    print(f"triton {triton.__version__} torch {torch.__version__} sm_{args.sm}: {compile_.ok} compiled, "
          f"{len(compile_.failures)} failed in {time.perf_counter() - started:.0f} s")
    return 1 if compile_.failures else 0


if __name__ == "__main__":
    sys.exit(main())
