"""train.py end to end: 2 CPU processes through the real deepspeed launcher (gloo), on real handwritten digits."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launches import logged_losses, master_port, no_shm_leftovers  # noqa: F401  (an autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(digit_shards):
    """The digits' train split: 1,348 images in 8 shards."""
    return digit_shards["train"]


def command(shards, out_dir, *sets, nproc=2):
    base = ["--config", "configs/tiny_cpu.yaml", "--set", f"data.shards={shards}", "--set", f"run.out_dir={out_dir}",
            "--set", "data.batch_size=16", "--set", "data.num_workers=0", "--set", "logging.every_steps=1",
            "--set", "logging.diagnostics_every=0", "--set", "data.backend=torch"]
    for s in sets:
        base += ["--set", s]
    return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(master_port()), "train.py", *base]


def run(cmd, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory):
    """50 uninterrupted steps with ZeRO-2: the run the other tests compare with."""
    out = tmp_path_factory.mktemp("reference")
    proc = run(command(shards, out, "optimization.max_steps=50", "checkpoint.every_steps=10",
                       "logging.probe_every=25", f"logging.probe_shards={shards}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_loss_decreases_and_ranks_agree(reference_run):
    out, log = reference_run
    loss = logged_losses(out)
    assert sorted(loss) == list(range(1, 51))
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(46, 51)) / 5
    assert last < 0.8 * first, (first, last)
    assert log.count("ranks agree: target encoder digest") == 5  # steps 10, 20, 30, 40, 50
    assert (out / "summary.json").is_file() and "images per GPU-hour" in log
    probes = [float(line.split("kNN top-1 ")[1].split("%")[0]) for line in log.splitlines() if "probe: kNN" in line]
    assert len(probes) == 2 and all(10.0 < p <= 100.0 for p in probes), probes  # steps 25 and 50; chance is 10%


def test_sigkill_then_resume_auto_gives_identical_losses(shards, reference_run, tmp_path):
    ref_out, _ = reference_run
    cmd = command(shards, tmp_path, "optimization.max_steps=50", "checkpoint.every_steps=10")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = tmp_path / "checkpoints" / "step00000020" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert marker.exists(), "no checkpoint at step 20"
    time.sleep(3)  # a few steps past the checkpoint, then kill every process of the launch without warning
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(logged_losses(tmp_path))
    assert killed_at < 50
    resumed = run([*cmd, "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    want, got = logged_losses(ref_out), logged_losses(tmp_path)
    assert sorted(got) == list(range(1, 51))
    assert [got[s] for s in range(1, 51)] == [want[s] for s in range(1, 51)]


def stop_with_sigterm(cmd, tmp_path, after_line):
    """Starts `cmd` in its own process group, sends SIGTERM to the whole group (as a cluster scheduler does on
    preemption) once `after_line` is printed; returns (launcher exit code, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        if after_line in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(log) + rest


def complete_tags(out_dir):
    return sorted(p.name for p in (out_dir / "checkpoints").glob("step*") if (p / "COMPLETE").exists())


def test_sigterm_checkpoints_and_exits_zero(shards, tmp_path):
    sets = ["optimization.max_steps=500", "checkpoint.every_steps=1000"]
    # one process, no launcher: train.py's own exit code
    single = command(shards, tmp_path / "one", *sets, nproc=1)
    single = [sys.executable, *single[single.index("train.py"):]]
    code, log = stop_with_sigterm(single, tmp_path, "step 3/500")
    assert code == 0, log[-3000:]
    tags = complete_tags(tmp_path / "one")
    assert len(tags) == 1 and 3 <= int(tags[0][4:]) < 500, tags
    assert "stopped by SIGTERM" in log
    # two ranks through the deepspeed launcher: both stop at the same step and the checkpoint is complete
    code, log = stop_with_sigterm(command(shards, tmp_path / "two", *sets), tmp_path, "step 3/500")
    tags = complete_tags(tmp_path / "two")
    assert len(tags) == 1 and 3 <= int(tags[0][4:]) < 500, (tags, log[-3000:])
    assert "stopped by SIGTERM" in log and "ranks agree" in log


def fp32_masters(ckpt, tag: str, stage: int, states: dict) -> dict:
    """{name: fp32 master} of a checkpoint: DeepSpeed's own consolidation under ZeRO; without ZeRO the optimizer's
    replicated fp32 groups, named through the AdamW groups of training.engine.param_groups."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from config import load_config
    from model.jepa import build_jepa
    from training.engine import param_groups

    if stage > 0:
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    model, _ = build_jepa(cfg.model, cfg.data.crop_size)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: m for group, masters in zip(param_groups(model, 0.0), states["optimizer"]["fp32_groups"],
                                                       strict=True) for p, m in zip(group["params"], masters, strict=True)}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages_target_is_the_ema_of_the_fp32_weights(shards, tmp_path, stage):
    from config import load_config
    from training.schedules import momentum_at
    from model.vit import sincos_pos_embed_2d

    proc = run(command(shards, tmp_path, "optimization.max_steps=3", "checkpoint.every_steps=1",
                       "checkpoint.keep_last=2", f"deepspeed.zero_optimization={{stage: {stage}}}"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = tmp_path / "checkpoints"
    states = "*mp_rank_00_model_states.pt"  # ZeRO-3 prefixes zero_pp_rank_0_; the client state is in rank 0's file
    prev = torch.load(min((ckpt / "step00000002").glob(states)), weights_only=False)
    last = torch.load(min((ckpt / "step00000003").glob(states)), weights_only=False)
    fp32 = fp32_masters(ckpt, "step00000003", stage, last)
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    ipe = 1348 // 32  # digits train split / global batch (16 x 2 ranks)
    m = momentum_at(3, cfg.optimization.epochs * ipe, *cfg.ema.momentum)
    worst = 0.0
    path = "on this rank's slice" if stage in (1, 2) else "full fp32 masters gathered per parameter"
    assert f"target EMA: {path}" in proc.stdout + proc.stderr
    for name, t in last["target_encoder"].items():
        if name == "pos_embed":  # frozen: the target keeps the fp32 sin-cos values (not DeepSpeed's bf16 copy)
            assert torch.equal(t, prev["target_encoder"][name]) and t.dtype == torch.float32
            assert torch.equal(t, sincos_pos_embed_2d(t.shape[-1], 8).float().reshape(t.shape))
            continue
        want = m * prev["target_encoder"][name].double() + (1 - m) * fp32["context_encoder." + name].double()
        worst = max(worst, ((t.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item())
    assert worst <= 1e-6, worst


def test_corrupt_or_missing_checkpoint_is_named(shards, reference_run, tmp_path):
    ref_out, _ = reference_run
    import shutil

    shutil.copytree(ref_out / "checkpoints", tmp_path / "checkpoints")
    tag = tmp_path / "checkpoints" / "step00000050"
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"garbage")
    proc = run(command(shards, tmp_path, "optimization.max_steps=60") + ["--resume", str(tag)], timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tag / 'mp_rank_00_model_states.pt'}: not a readable torch checkpoint" in proc.stderr
    missing = tmp_path / "checkpoints" / "step00000099"
    proc = run(command(shards, tmp_path, "optimization.max_steps=60", nproc=1) + ["--resume", str(missing)])
    assert proc.returncode != 0 and f"checkpoint {missing} does not exist" in proc.stdout + proc.stderr


def test_eval_reads_our_checkpoint(shards, reference_run, tmp_path):
    ref_out, _ = reference_run
    tag = ref_out / "checkpoints" / "step00000050"
    for which in ("target", "context"):
        out = tmp_path / f"{which}.json"
        proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(tag), "--train-shards", str(shards),
                               "--val-shards", str(shards), "--limit", "120", "--epochs", "3", "--encoder", which,
                               "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(out.read_text())["setup"]["encoder"] == which


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    cmd = command(shards, tmp_path, "optimization.max_steps=20", "checkpoint.every_steps=1",
                  "optimization.start_lr=1e30", "optimization.lr=1e30", nproc=1)
    proc = run([sys.executable, *cmd[cmd.index("train.py"):]], timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, log[-3000:]
    found = re.search(r"non-finite (loss|weights) at step (\d+); stopped without saving", log)
    assert found, log[-3000:]
    bad = int(found.group(2))
    assert 1 <= bad <= 20
    tags = complete_tags(tmp_path)
    assert all(int(t[4:]) < bad for t in tags), (bad, tags)  # nothing saved from the diverged weights
    for tag in tags:  # and what was saved is finite: the loss can lag the weights by a step
        states = torch.load(tmp_path / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)
        for name, t in [*states["module"].items(), *states["target_encoder"].items()]:
            assert torch.isfinite(t).all(), (tag, name)
