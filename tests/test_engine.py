"""training/engine.py and the DeepSpeed settings derived for it: what one step of a one-rank run does.

The engine runs in a subprocess (a world of one on gloo), so its process group does not outlive the test.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_config
from pipeline.loader import BatchLayout
from training.engine import deepspeed_config

ROOT = Path(__file__).resolve().parent.parent

# Builds train.py's engine on the tiny config, takes two steps and prints what DeepSpeed made of the config, and every
# collective the steps issued (the real torch.distributed functions, counted on the way through).
ONE_RANK_STEPS = r"""
import collections, json, sys, torch
import torch.distributed as dist
import kernels
from benchmarks.step import OurStep
from config import load_config
from training.data import mask_sampler
from training.distributed import setup_distributed, single_process_env

cfg = load_config("configs/tiny_cpu.yaml", overrides=sys.argv[1:])
single_process_env()
device, _, world = setup_distributed("cpu")
kernels.configure(device=device)
step = OurStep(cfg, device, world)
masks = mask_sampler(cfg).sample(cfg.data.batch_size, step=0)
images = torch.randn(cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
step(images, *masks)
calls = collections.Counter()
for name in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "all_gather", "reduce"):
    real = getattr(dist, name)
    def counted(*args, _real=real, _name=name, **kwargs):
        calls[_name] += 1
        return _real(*args, **kwargs)
    setattr(dist, name, counted)
step(images, *masks)
step.close()
from training import TrainingError
from training.checkpoints import check_records, weights_record
check = lambda: check_records([weights_record(step.engine, step.target)], 2, "ckpts")
check()  # finite: passes
refusals = []
for module in (step.engine.module, step.target):  # one weight made NaN, as a NaN gradient would leave it
    weight = next(module.parameters())
    kept = weight.detach().clone()
    weight.data.view(-1)[0] = float("nan")
    try:
        check()
    except TrainingError as err:
        refusals.append(str(err))
    weight.data.copy_(kept)
opt = step.engine.optimizer
print(json.dumps({"clip": step.engine.gradient_clipping(), "optimizer_clip": opt.clip_grad,
                  "check_overflow": opt.check_grad_overflow, "grad_norm": opt.compute_grad_norm,
                  "ema_gathers": len(step.ema.gathered), "collectives": dict(calls), "refusals": refusals}))
"""


def one_rank_steps(*sets) -> dict:
    proc = subprocess.run([sys.executable, "-c", ONE_RANK_STEPS, *sets], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_steps() -> dict:
    return one_rank_steps()


def test_derived_deepspeed_config_neither_clips_nor_scans_gradients():
    cfg = load_config(ROOT / "configs" / "vith14_in1k.yaml")
    eight = BatchLayout(cfg.data.batch_size, cfg.optimization.grad_accum, world_size=8)
    ds = deepspeed_config(cfg, eight)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (eight.global_batch, eight.batch_size)
    assert ds["gradient_clipping"] == 0.0  # the official recipe; DeepSpeed's own default would clip at 1.0
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert ds["zero_optimization"]["compute_grad_norm"] is False
    clipped = load_config(ROOT / "configs" / "vith14_in1k.yaml", overrides=["deepspeed.gradient_clipping=1.0"])
    ds = deepspeed_config(clipped, eight)
    assert ds["gradient_clipping"] == 1.0 and "compute_grad_norm" not in ds["zero_optimization"]  # clipping needs it
    stage1 = load_config(ROOT / "configs" / "vith14_in1k.yaml", overrides=["deepspeed.zero_optimization.stage=1"])
    assert "compute_grad_norm" not in deepspeed_config(stage1, eight)["zero_optimization"]  # stage 2 only


@pytest.mark.slow
def test_one_rank_zero2_step_neither_clips_nor_syncs_and_issues_one_collective(default_steps):
    got = default_steps
    assert got["clip"] == 0.0 and got["optimizer_clip"] == 0.0
    assert got["check_overflow"] is False and got["grad_norm"] is False
    assert got["ema_gathers"] == 0  # one rank: the EMA writes the target in place, nothing to gather
    # What is left is DeepSpeed's gradient all-reduce (it runs one even on one rank); before: 3 more scalar
    # all-reduces (overflow flag, two group norms, the flag read back by a host sync) and 2 target all-gathers.
    assert got["collectives"] == {"all_reduce": 1}, got


@pytest.mark.slow
def test_non_finite_weights_are_never_saved(default_steps):
    """With no per-step overflow scan, a NaN gradient reaches the weights a step before any loss shows it: the save
    refuses, naming the step, whether the trained module or the target holds the NaN."""
    want = "non-finite weights at step 2; stopped without saving, the last good checkpoint is kept in ckpts"
    assert default_steps["refusals"] == [want, want]


@pytest.mark.slow
def test_a_deepspeed_section_that_asks_for_clipping_gets_it():
    got = one_rank_steps("deepspeed.gradient_clipping=1.0")
    assert got["clip"] == 1.0 and got["optimizer_clip"] == 1.0 and got["grad_norm"] is True


# Builds the engine only (torch.compile is lazy: nothing compiles) and prints the trained module's forward pre-hooks
# and whether each block's forward was replaced by a compiled one.
ENGINE_HOOKS = r"""
import json, sys
import kernels
from config import load_config
from training.distributed import setup_distributed, single_process_env
from pipeline.loader import BatchLayout
from training.engine import build_engine

cfg = load_config("configs/tiny_cpu.yaml", overrides=sys.argv[1:])
single_process_env()
device, _, world = setup_distributed("cpu")
kernels.configure(device=device)
engine, _, target = build_engine(cfg, BatchLayout(cfg.data.batch_size, 1, world), device)
print(json.dumps({"hooks": [h.__name__ for h in engine.module._forward_pre_hooks.values()],
                  "compiled": sum("_forward" in vars(b) for b in engine.module.context_encoder.blocks)}))
"""


@pytest.mark.parametrize("mode, marks", [("default", 0), ("reduce-overhead", 1)])
def test_cuda_graph_mode_marks_each_step_for_cuda_graph_trees(mode, marks):
    """With CUDA graphs (compile_mode reduce-overhead) each micro step tells CUDA graph trees that a new step begins;
    the target encoder's no-grad forward inside the step must not be taken for one."""
    proc = subprocess.run([sys.executable, "-c", ENGINE_HOOKS, "model.compile=true", f"model.compile_mode={mode}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hooks"].count("mark_cuda_graph_step") == marks, got["hooks"]  # beside DeepSpeed's own hooks
    assert got["compiled"] == 4
