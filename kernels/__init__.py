"""The ops every model gathers and attends through, and the one switch that picks each op's implementation.

Model code calls `kernels.attention`, `kernels.masked_gather` and `kernels.predictor_tokens`, never a raw kernel.
Every module here that declares `KERNEL = KernelOp(...)` (kernels/registry.py) is registered in REGISTRY; its public
ops become functions of this package (`kernels.<op>`, and each implementation as `kernels.<op>_<impl>`).
`configure()` decides, once, which implementation each group runs: the config's `kernels:` section, overridden by
the environment (IJEPA_ATTENTION, IJEPA_GATHER); "auto" takes the group's choice for the device class. An op called
before any configure() configures the defaults once.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import pkgutil
from typing import Callable, Optional

import torch

from kernels.masked_gather import set_index_check
from kernels.registry import KernelOp

logger = logging.getLogger(__name__)


def _discover() -> dict[str, KernelOp]:
    """{group name: KernelOp} of every kernels/ module that declares KERNEL."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        op = getattr(module, "KERNEL", None)
        if isinstance(op, KernelOp):
            found[op.name] = op
    return found


REGISTRY: dict[str, KernelOp] = _discover()
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
    if not _ops:
        configure()
    return _ops[name]


def _dispatcher(name: str, reference: Callable) -> Callable:
    """kernels.<name>: the implementation configure() chose, with the reference's signature and docstring."""

    @functools.wraps(reference)
    def dispatch(*args, **kwargs):
        return _op(name)(*args, **kwargs)

    dispatch.__name__ = dispatch.__qualname__ = name
    return dispatch


# kernels.<op> dispatches; kernels.<op>_<implementation> is that implementation itself (tests, benchmarks).
for _kernel in REGISTRY.values():
    for _name in _kernel.ops:
        globals()[_name] = _dispatcher(_name, _kernel.implementations[_kernel.reference][_name])
    for _impl, _fns in _kernel.implementations.items():
        globals().update({f"{_name}_{_impl}": _fn for _name, _fn in _fns.items()})
del _kernel, _name, _impl, _fns
