"""training/engine.py and the DeepSpeed settings derived for it: what one step of a one-rank run does. (The settings
alone, derived in process: unit/test_engine.py.)

Every engine is built in one subprocess (a world of one on gloo, set up once), so its process group does not outlive
the test; the variants are built one after the other in it, each freed before the next.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# On the tiny config, in one process group of one rank, one JSON object with a part per variant:
#   default, clipping (deepspeed.gradient_clipping=1.0): train.py's engine, two steps; what DeepSpeed made of the
#     config, every collective the second step issued (the real torch.distributed functions, counted on the way
#     through, put back after), and for the default one what the save's check says of weights made non-finite and
#     whether TorchInductor was loaded (nothing asked to compile);
#   compile_default, compile_reduce-overhead (model.compile=true, model.compile_mode=...): the engine only
#     (torch.compile is lazy: nothing compiles), the trained module's forward pre-hooks and how many blocks' forwards
#     were replaced by compiled ones.
ENGINE_VARIANTS = r"""
import collections, contextlib, gc, json, os, sys
import torch
import torch.distributed as dist
import kernels
from benchmarks.step import OurStep
from config import load_config
from training.plan import BatchLayout
from training import TrainingError
from training.checkpoints import check_records, weights_record
from config import mask_sampler
from training.distributed import setup_distributed, single_process_env
from training.engine import build_engine

COLLECTIVES = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "all_gather", "reduce")


@contextlib.contextmanager
def counted_collectives():
    calls, real = collections.Counter(), {name: getattr(dist, name) for name in COLLECTIVES}
    for name, fn in real.items():
        def counted(*args, _real=fn, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        setattr(dist, name, counted)
    try:
        yield calls
    finally:  # the later variants see the real functions
        for name, fn in real.items():
            setattr(dist, name, fn)


def two_steps(cfg, device, world):
    step = OurStep(cfg, device, world)
    masks = mask_sampler(cfg).sample(cfg.data.batch_size, step=0)
    images = torch.randn(cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
    step(images, *masks)
    with counted_collectives() as calls:
        step(images, *masks)
        step.close()
    opt = step.engine.optimizer
    figures = {"clip": step.engine.gradient_clipping(), "optimizer_clip": opt.clip_grad,
               "check_overflow": opt.check_grad_overflow, "grad_norm": opt.compute_grad_norm,
               "ema_gathers": len(step.ema.gathered), "collectives": dict(calls)}
    return step, figures


def refusals(step):
    check = lambda: check_records([weights_record(step)], 2, "ckpts")
    check()  # finite: passes
    said = []
    for module in (step.engine.module, step.target):  # one weight made NaN, as a NaN gradient would leave it
        weight = next(module.parameters())
        kept = weight.detach().clone()
        weight.data.view(-1)[0] = float("nan")
        try:
            check()
        except TrainingError as err:
            said.append(str(err))
        weight.data.copy_(kept)
    return said


def hooks(cfg, device, world):
    engine, _, _ = build_engine(cfg, BatchLayout(cfg.data.batch_size, 1, world), device)
    return {"hooks": [h.__name__ for h in engine.module._forward_pre_hooks.values()],
            "compiled": sum("_forward" in vars(b) for b in engine.module.context_encoder.blocks)}


single_process_env()
device, _, world = setup_distributed("cpu")
kernels.configure(device=device)
tiny = lambda *sets: load_config("configs/tiny_cpu.yaml", overrides=list(sets))
got = {}
step, got["default"] = two_steps(tiny(), device, world)
got["default"]["inductor_loaded"] = "torch._inductor.compile_fx" in sys.modules  # DeepSpeed's Muon decorators
got["default"]["dynamo_switch_left"] = "TORCHDYNAMO_DISABLE" in os.environ
got["default"]["refusals"] = refusals(step)
del step
gc.collect()  # one engine at a time
step, got["clipping"] = two_steps(tiny("deepspeed.gradient_clipping=1.0"), device, world)
del step
gc.collect()
for mode in ("default", "reduce-overhead"):
    got[f"compile_{mode}"] = hooks(tiny("model.compile=true", f"model.compile_mode={mode}"), device, world)
    gc.collect()
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def engine_variants() -> dict:
    proc = subprocess.run([sys.executable, "-c", ENGINE_VARIANTS], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_rank_zero2_step_neither_clips_nor_syncs_and_issues_one_collective(engine_variants):
    got = engine_variants["default"]
    assert got["clip"] == 0.0 and got["optimizer_clip"] == 0.0
    assert got["check_overflow"] is False and got["grad_norm"] is False
    assert got["ema_gathers"] == 0  # one rank: the EMA writes the target in place, nothing to gather
    # What is left is DeepSpeed's gradient all-reduce (it runs one even on one rank); before: 3 more scalar
    # all-reduces (overflow flag, two group norms, the flag read back by a host sync) and 2 target all-gathers.
    assert got["collectives"] == {"all_reduce": 1}, got
    # deepspeed.initialize imported DeepSpeed's Muon module, its torch.compile decorators without TorchInductor
    # (training.engine.import_muon_uncompiled), and torch's switch is back as it was
    assert not got["inductor_loaded"] and not got["dynamo_switch_left"]


def test_non_finite_weights_are_never_saved(engine_variants):
    """With no per-step overflow scan, a NaN gradient reaches the weights a step before any loss shows it: the save
    refuses, naming the step, whether the trained module or the target holds the NaN."""
    want = "non-finite weights at step 2; stopped without saving, the last good checkpoint is kept in ckpts"
    assert engine_variants["default"]["refusals"] == [want, want]


def test_a_deepspeed_section_that_asks_for_clipping_gets_it(engine_variants):
    got = engine_variants["clipping"]
    assert got["clip"] == 1.0 and got["optimizer_clip"] == 1.0 and got["grad_norm"] is True


@pytest.mark.parametrize("mode, marks", [("default", 0), ("reduce-overhead", 1)])
def test_cuda_graph_mode_marks_each_step_for_cuda_graph_trees(engine_variants, mode, marks):
    """With CUDA graphs (compile_mode reduce-overhead) each micro step tells CUDA graph trees that a new step begins;
    the target encoder's no-grad forward inside the step must not be taken for one."""
    got = engine_variants[f"compile_{mode}"]
    assert got["hooks"].count("mark_cuda_graph_step") == marks, got["hooks"]  # beside DeepSpeed's own hooks
    assert got["compiled"] == 4
