"""Compiles every registered Triton kernel specialisation (kernels/registry.py) to a cubin for a CUDA architecture,
without a GPU: catches front-end, lowering and ptxas errors that Triton's interpreter (the CPU tests) never sees.

    python -m benchmarks.aot_compile_check [--sm 90] [--quick]

About 430 compilations, 10+ minutes on 2 cores; --quick: the training shapes only (15, about a minute). Exit 1 on any
failure. Run without TRITON_INTERPRET (it would make the kernels interpreter objects).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sm", type=int, default=90, help="CUDA compute capability × 10 (90: Hopper)")
    p.add_argument("--quick", action="store_true", help="bf16 training shapes only, first autotune config")
    return p.parse_args(argv)


def compile_spec(spec, target) -> None:
    """Compiles one registered specialisation (kernels/registry.py CompileSpec) to a cubin for `target`."""
    import triton
    from triton.compiler import ASTSource

    fn = spec.kernel.fn if isinstance(spec.kernel, triton.runtime.Autotuner) else spec.kernel
    sig = {n: "constexpr" if n in spec.constexprs else spec.pointers.get(n, "fp32" if n.endswith("scale") else "i32")
           for n in fn.arg_names}
    out = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(spec.constexprs)), target=target,
                         options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    if "cubin" not in out.asm:
        raise RuntimeError(f"no cubin, only {list(out.asm)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: the interpreter replaces the kernels this script compiles",
              file=sys.stderr)
        return 2
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    import kernels

    target, started, ok, failures = GPUTarget("cuda", args.sm, 32), time.perf_counter(), 0, []
    for op in kernels.REGISTRY.values():
        for spec in op.compile_specs(args.quick):
            try:
                compile_spec(spec, target)
                ok += 1
            except Exception as err:  # reported with the kernel and its specialisation; the run exits 1
                name = getattr(spec.kernel, "__name__", None) or spec.kernel.fn.__name__
                failures.append(f"{op.name}: {name} | {spec.label} | {err!r}"[:2000])
    for failure in failures[:20]:
        print("FAIL", failure)
    print(f"triton {triton.__version__} torch {torch.__version__} sm_{args.sm}: {ok} compiled, {len(failures)} "
          f"failed in {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
