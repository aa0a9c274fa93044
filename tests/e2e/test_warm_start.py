"""train.py --init-from end to end, as a user runs it (one process, the real CLI, then export.py): a warm start from the
official fixture keeps its target encoder's outputs to 1e-5 after a step at lr 0 and EMA momentum 1, and its export
loads in transformers with the same outputs; a warm start from one of our checkpoints (bf16: the context encoder
enters DeepSpeed's masters rounded, the target stays exact) and from an export folder; --resume auto goes on from the
run's own checkpoint and keeps the init record; an official config with meta.load_checkpoint goes on from the epoch
the file records and says what is not carried; another model is one line. (The plan's checks: unit/test_warm_start_checks.py.)
"""
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_files import OFFICIAL
from export_checks import EXPECTED, TOL, assert_exported, transformers_tokens
from launches import error_lines, launch, launch_all, ok, python, run_record, train_args

from evaluation.encoders import load_encoder
from model.safe_load import weights_only_loads
from training.states import deepspeed_safe_types

ROOT = Path(__file__).resolve().parents[2]
# The fixture's model (tests/fixtures/README.md) on the tiny config, and a step that changes no weight
FIXTURE_MODEL = ("data.crop_size=128", "model.patch_size=16", "model.embed_dim=192", "model.depth=2",
                 "model.num_heads=3", "model.pred_emb_dim=96", "model.pred_depth=2")
STILL = ("optimization.lr=0", "optimization.start_lr=0", "optimization.final_lr=0", "ema.momentum=[1.0,1.0]",
         "optimization.max_steps=1", "checkpoint.every_steps=1")
TAG = Path("checkpoints") / "step00000001"


def warm_args(shards, out, source, *sets):
    return python([*train_args(shards, out, *FIXTURE_MODEL, *STILL, *sets), "--init-from", str(source)])


def fp32_weights(tag: Path) -> dict:
    """The checkpoint's fp32 master weights (context encoder + predictor), gathered by DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_loads(deepspeed_safe_types()):
        return get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)


def target_state(tag: Path) -> dict:
    return torch.load(next(tag.glob("*mp_rank_00_model_states.pt")), weights_only=True)["target_encoder"]


@pytest.fixture(scope="module")
def warm(small_shards, tmp_path_factory):
    """One fp32 step at lr 0 and EMA momentum 1 from the official fixture (12 steps per epoch of 16), then export.py
    on its checkpoint: (run folder, its log, the export folder, export.py's process)."""
    root = tmp_path_factory.mktemp("warm")
    log = ok(launch(warm_args(small_shards, root / "run", OFFICIAL, "optimization.precision=fp32")))
    proc = launch([sys.executable, "export.py", "--checkpoint", str(root / "run" / TAG), "--out", str(root / "export")])
    return root / "run", log, root / "export", proc


def test_a_warm_start_from_the_official_file_keeps_its_outputs(warm):
    run, log, _, _ = warm
    assert re.search(r"warm start from official \S+checkpoint.pth.tar \(epoch 3\): context encoder ← encoder, "
                     r"predictor ← predictor, target encoder ← target_encoder\n", log), log[-3000:]
    assert "steps 1..1 of" in log
    assert run_record(run / TAG)["init"] == {
        "source": str(OFFICIAL.resolve()), "kind": "official",
        "sha256": {OFFICIAL.name: hashlib.sha256(OFFICIAL.read_bytes()).hexdigest()},
        "loaded": {"context_encoder": "encoder", "predictor": "predictor", "target_encoder": "target_encoder"},
        "continue": False, "precision": "fp32", "epoch": 3}
    want = torch.load(EXPECTED)
    target, _ = load_encoder(run / TAG, "target")
    context, _ = load_encoder(run / TAG, "context")
    from model.predictor import Predictor

    predictor = Predictor(context.grid, 192, 96, 2, 3)
    predictor.load_state_dict({k[len("predictor."):]: v for k, v in fp32_weights(run / TAG).items()
                               if k.startswith("predictor.")} | {"predictor_pos_embed": predictor.predictor_pos_embed})
    with torch.no_grad():
        z = context(want["images"], want["context_indices"])
        errors = {"target_encoder_out": (target(want["images"]) - want["target_encoder_out"]).abs().max().item(),
                  "encoder_out": (z - want["encoder_out"]).abs().max().item(),
                  "predictor_out": (predictor.eval()(z, want["context_indices"], want["target_indices"])
                                    - want["predictor_out"]).abs().max().item()}
    print("max |Δ| against the official outputs after one step:", errors)
    assert max(errors.values()) <= TOL, errors


def test_its_export_loads_in_transformers_with_the_official_outputs(warm):
    run, _, out, proc = warm
    assert_exported(proc, out, "target")
    want = torch.load(EXPECTED)
    gap = (transformers_tokens(out, want["images"]) - want["target_encoder_out"]).abs().max().item()
    print("transformers IJepaModel against the official target encoder outputs: max |Δ|", gap)
    assert gap <= TOL


def test_from_our_checkpoint_and_from_an_export_folder(warm, small_shards, tmp_path):
    """bf16 from the fp32 run's checkpoint: the target exact, the context encoder its bf16 rounding (DeepSpeed's
    masters come from the bf16 module); then fp32 from that bf16 checkpoint (its fp32 masters, by zero_to_fp32) and
    from the export folder (context = target = the exported encoder) at once."""
    run, _, export, _ = warm
    bf16 = tmp_path / "bf16"
    log = ok(launch(warm_args(small_shards, bf16, run / TAG)))
    assert "the context encoder and predictor enter DeepSpeed's fp32 masters rounded to bf16" in log
    first, second = fp32_weights(run / TAG), fp32_weights(bf16 / TAG)
    assert all(torch.equal(second[k], v.bfloat16().float()) for k, v in first.items())
    assert all(torch.equal(target_state(bf16 / TAG)[k], v) for k, v in target_state(run / TAG).items())
    again, exported = tmp_path / "again", tmp_path / "exported"
    procs = launch_all([warm_args(small_shards, again, bf16 / TAG, "optimization.precision=fp32"),
                        warm_args(small_shards, exported, export, "optimization.precision=fp32")])
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"warm start from export \S+: context encoder ← timm/model.safetensors \(target encoder\), "
                     r"target encoder ← timm/model.safetensors \(target encoder\); predictor fresh", procs[1].stdout)
    third = fp32_weights(again / TAG)  # bf16's fp32 masters, not its bf16 module; the fixed positions in fp32
    assert all(torch.equal(third[k], first[k] if k.endswith("pos_embed") else v) for k, v in second.items())
    target = target_state(run / TAG)
    masters = fp32_weights(exported / TAG)
    for k, v in target.items():
        assert torch.equal(target_state(exported / TAG)[k], v)
        if "context_encoder." + k in masters:
            assert torch.equal(masters["context_encoder." + k], v), k


def test_resume_auto_goes_on_from_its_own_checkpoint_and_keeps_the_record(warm, small_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(warm[0], run)
    args = warm_args(small_shards, run, OFFICIAL, "optimization.precision=fp32", "optimization.max_steps=2")
    log = ok(launch([*args, "--resume", "auto"]))
    assert f"resumed from {run / TAG} at step 1" in log and "warm start from" not in log
    assert run_record(run / "checkpoints" / "step00000002")["init"] == run_record(run / TAG)["init"]
    target = target_state(run / TAG)
    assert all(torch.equal(target_state(run / "checkpoints" / "step00000002")[k], v) for k, v in target.items())


def official_config(folder: Path, tmp_path: Path) -> Path:
    """An official-schema YAML of the fixture's model that loads its file (meta.load_checkpoint, read_checkpoint
    beside the logs as the official code reads it): 5 epochs, bf16."""
    text = (ROOT / "tests" / "fixtures" / "official_configs" / "in1k_vith14_ep300.yaml").read_text()
    for old, new in [("batch_size: 128", "batch_size: 16"), ("crop_size: 224", "crop_size: 128"),
                     ("num_workers: 10", "num_workers: 0"), ("patch_size: 14", "patch_size: 16"),
                     ("min_keep: 10", "min_keep: 4"), ("load_checkpoint: false", "load_checkpoint: true"),
                     ("model_name: vit_huge", "model_name: vit_tiny"), ("pred_depth: 12", "pred_depth: 2"),
                     ("pred_emb_dim: 384", "pred_emb_dim: 96"), ("read_checkpoint: null",
                                                                 "read_checkpoint: IN1K-tiny-ep3.pth.tar"),
                     ("epochs: 300", "epochs: 5"), ("warmup: 40", "warmup: 1"),
                     ("$replace_this_with_path_for_experiment_logs/vith14.224-bs.2048-ep.300/", f"{folder}/")]:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "official.yaml"
    path.write_text(text)
    return path


def test_an_official_config_goes_on_from_the_epoch_of_its_file(small_shards, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    shutil.copy(OFFICIAL, folder / "IN1K-tiny-ep3.pth.tar")
    cmd = python(["train.py", "--config", str(official_config(folder, tmp_path)), "--set",
                  f"data.shards={small_shards}", "--set", "model.depth=2", "--set", "data.backend=torch", "--set",
                  "logging.every_steps=1", "--set", "logging.diagnostics_every=0", "--set", "optimization.max_steps=37"])
    log = ok(launch(cmd))
    assert f"warm start: the step count and schedules go on from epoch 3 of {folder / 'IN1K-tiny-ep3.pth.tar'}: " \
           f"step 36 = 3 × 12 steps per epoch, the data at the start of epoch 3" in log, log[-3000:]
    assert "not carried from" in log and "its AdamW moments" in log
    assert "steps 37..37 of 60" in log and re.search(r"step 37/37 ep 3 \| loss", log)
    record = run_record(folder / "checkpoints" / "step00000037")
    assert record["init"]["continue"] is True and record["position"] == [3, 16]
    again = ok(launch(cmd))  # the same config relaunched: its own checkpoint (resume auto), not the file again
    assert "nothing to do: the run is at step 37" in again and "warm start" not in again


def test_another_model_is_one_line(small_shards, tmp_path):
    proc = launch(python([*train_args(small_shards, tmp_path / "run"), "--init-from", str(OFFICIAL)]))
    assert proc.returncode == 1
    lines = error_lines(proc)
    assert lines == [f"error: checkpoint.init_from {OFFICIAL}: its encoder does not fit the config's model: pos_embed "
                     f"is (1, 64, 192) in it, (1, 64, 96) in the config's model; set model.embed_dim=192, "
                     f"model.patch_size=16, data.crop_size=128, model.depth=2, model.pred_emb_dim=96 (the source's)"]
    assert not (tmp_path / "run").exists()  # refused by the plan: nothing was written
