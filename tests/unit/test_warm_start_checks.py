"""training/warm_start.py in this process: the run plan's checks of a warm-start source (an official .pth.tar, one of
our checkpoint tag folders, an export folder), each refusal one line; what run.json records; the weights it loads
reproduce the official fixture's outputs; init_continue's step and the loader placed at the epoch's start; the
official meta.load_checkpoint / read_checkpoint mapping. (train.py end to end: e2e/test_warm_start.py.)"""
from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from checkpoint_files import OFFICIAL, STATES, Planted

from config import ConfigError, config_to_yaml, load_config
from model.export import save_timm
from model.inputs import IMAGENET_MEAN, IMAGENET_STD
from model.jepa import build_jepa
from model.safe_load import CheckpointError
from training.integrity import mark_complete
from training.loop import build_training_loader
from training.plan import plan_run
from training.warm_start import WarmStartError, init_step, load_init, plan_init

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = OFFICIAL.parent / "expected.pt"
# The official fixture's model (tests/fixtures/README.md) on the tiny config: crop 128, patch 16, width 192, 2 blocks
FIXTURE_MODEL = ("data.crop_size=128", "model.patch_size=16", "model.embed_dim=192", "model.depth=2",
                 "model.num_heads=3", "model.pred_emb_dim=96", "model.pred_depth=2")


def fixture_cfg(init_from, *sets: str):
    return load_config(ROOT / "configs" / "tiny_cpu.yaml",
                       overrides=[*FIXTURE_MODEL, f"checkpoint.init_from={json.dumps(str(init_from))}", *sets])


def refused(cfg) -> str:
    """plan_init's one-line refusal of `cfg`'s source."""
    with pytest.raises(CheckpointError) as err:
        plan_init(cfg, None)
    assert "\n" not in str(err.value)
    return str(err.value)


def loaded(init: dict, cfg):
    """(context encoder + predictor, target encoder) of `cfg`'s model, seeded, with `init` loaded, in eval mode."""
    torch.manual_seed(7)
    model, target = build_jepa(cfg.model, cfg.data.crop_size)
    load_init(init, model, target)
    return model.eval(), target.eval()


def official_outputs(model, target) -> dict[str, float]:
    """max |Δ| of each part's outputs against the ones the official code recorded (expected.pt)."""
    want = torch.load(EXPECTED)
    with torch.no_grad():
        z = model.context_encoder(want["images"], want["context_indices"])
        pred = model.predictor(z, want["context_indices"], want["target_indices"])
        return {"target_encoder_out": (target(want["images"]) - want["target_encoder_out"]).abs().max().item(),
                "encoder_out": (z - want["encoder_out"]).abs().max().item(),
                "predictor_out": (pred - want["predictor_out"]).abs().max().item()}


# ------------------------------------------------------------------------------------------------ official files

def test_no_init_and_a_resume_plan_nothing():
    assert plan_init(load_config(ROOT / "configs" / "tiny_cpu.yaml"), None) is None
    assert plan_init(fixture_cfg(OFFICIAL), saved=object()) is None  # a run with a checkpoint of its own resumes it
    load_init(None, None, None)  # nothing to load


def test_official_fixture_is_recorded_and_loads_its_outputs():
    cfg = fixture_cfg(OFFICIAL)
    init = plan_init(cfg, None)
    assert init == {"source": str(OFFICIAL.resolve()), "kind": "official",
                    "sha256": {OFFICIAL.name: hashlib.sha256(OFFICIAL.read_bytes()).hexdigest()},
                    "loaded": {"context_encoder": "encoder", "predictor": "predictor",
                               "target_encoder": "target_encoder"},
                    "continue": False, "precision": "bf16", "epoch": 3}
    assert json.loads(json.dumps(init)) == init  # run.json holds it
    errors = official_outputs(*loaded(init, cfg))
    assert max(errors.values()) <= 1e-5, errors


def test_an_official_file_without_target_or_predictor(tmp_path):
    """The target encoder is the context encoder where the file has none; a missing predictor starts fresh."""
    ckpt = torch.load(OFFICIAL, weights_only=True)
    path = tmp_path / "encoder_only.pth.tar"
    torch.save({"encoder": ckpt["encoder"], "epoch": 3}, path)
    cfg = fixture_cfg(path)
    init = plan_init(cfg, None)
    assert init["loaded"] == {"context_encoder": "encoder", "predictor": None, "target_encoder": "encoder"}
    model, target = loaded(init, cfg)
    torch.manual_seed(7)
    fresh, _ = build_jepa(cfg.model, cfg.data.crop_size)
    for (name, a), b in zip(model.context_encoder.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, ckpt["encoder"]["module." + name]), name
    assert all(torch.equal(a, b) for a, b in zip(model.predictor.state_dict().values(),
                                                  fresh.predictor.state_dict().values()))


@pytest.mark.parametrize("sets, message", [
    ((), r"its encoder does not fit the config's model: pos_embed is \(1, 64, 192\) in it, \(1, 64, 96\) in the "
         r"config's model; set model.embed_dim=192, model.patch_size=16, data.crop_size=128, model.depth=2, "
         r"model.pred_emb_dim=96 \(the source's\)$"),
    (FIXTURE_MODEL + ("model.pred_depth=3",), r"its predictor does not fit the config's model: it has no "
                                              r"predictor_blocks.2.norm1.weight .*; set model.pred_depth=2"),
    (FIXTURE_MODEL + ("model.depth=1",), r"its encoder does not fit the config's model: it holds blocks.1.norm1.weight "
                                         r"\(192,\), which the config's model has not; set model.depth=2"),
    (FIXTURE_MODEL + ("data.crop_size=112",), r"pos_embed is \(1, 64, 192\) in it, \(1, 49, 192\) in the config's "
                                              r"model; set data.crop_size=128 \(the source's\)$"),
])
def test_another_model_is_one_line_naming_the_tensor_both_shapes_and_what_to_set(sets, message):
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[*sets, f"checkpoint.init_from={OFFICIAL}"])
    text = refused(cfg)
    assert text.startswith(f"checkpoint.init_from {OFFICIAL}: ")
    assert re.search(message, text), text


def test_unusable_files_are_one_line_and_run_no_code(tmp_path):
    assert "no such file or folder: give an official .pth.tar" in refused(fixture_cfg(tmp_path / "nope.pth.tar"))
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    assert "garbage.pth.tar: not a readable torch checkpoint" in refused(fixture_cfg(garbage))
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    assert "empty.pth.tar: the file is empty" in refused(fixture_cfg(empty))
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(OFFICIAL.read_bytes()[:100_000])
    assert "truncated.pth.tar: not a readable torch checkpoint" in refused(fixture_cfg(truncated))
    planted, marker = tmp_path / "planted.pth.tar", tmp_path / "ran"
    torch.save({"encoder": {"pos_embed": Planted(marker)}}, planted)
    assert "holds objects other than tensors and plain values" in refused(fixture_cfg(planted))
    assert not marker.exists()
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": {}}, foreign)
    assert "foreign.pth.tar: not in the official I-JEPA format" in refused(fixture_cfg(foreign))


def test_init_continue_needs_an_epoch_short_of_the_schedule(tmp_path):
    init = plan_init(fixture_cfg(OFFICIAL, "checkpoint.init_continue=true", "optimization.epochs=4"), None)
    assert init["continue"] is True and init["epoch"] == 3
    text = refused(fixture_cfg(OFFICIAL, "checkpoint.init_continue=true", "optimization.epochs=3"))
    assert text.startswith(f"nothing to do: {OFFICIAL} is at epoch 3, and optimization.epochs is 3: raise")
    ckpt = torch.load(OFFICIAL, weights_only=True)
    no_epoch = tmp_path / "no_epoch.pth.tar"
    torch.save({part: ckpt[part] for part in ("encoder", "predictor", "target_encoder")}, no_epoch)
    assert plan_init(fixture_cfg(no_epoch), None)["loaded"]["target_encoder"] == "target_encoder"
    assert "records no epoch" in refused(fixture_cfg(no_epoch, "checkpoint.init_continue=true"))


# ------------------------------------------------------------------------------------------------ our checkpoints

def our_checkpoint(root: Path, cfg, num_heads: int = 3) -> tuple[Path, dict]:
    """A checkpoint tag folder as train.py writes it in fp32 (DeepSpeed's module states with the shapes its
    zero_to_fp32 reads, our client state, the COMPLETE marker with each file's sha256); returns it and its tensors."""
    torch.manual_seed(3)
    model, target = build_jepa(cfg.model, cfg.data.crop_size)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.01)  # the target differs from the context encoder
    saved = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=[*FIXTURE_MODEL, f"model.num_heads={num_heads}"])
    tag = root / "checkpoints" / "step00000010"
    tag.mkdir(parents=True)
    torch.save({"module": model.state_dict(), "target_encoder": target.state_dict(), "config": config_to_yaml(saved),
                "param_shapes": [OrderedDict((n, p.shape) for n, p in model.named_parameters() if p.requires_grad)],
                "frozen_param_shapes": OrderedDict((n, p.shape) for n, p in model.named_parameters()
                                                   if not p.requires_grad), "step": 10}, tag / STATES)
    mark_complete(tag, 10)
    return tag, {"module": model.state_dict(), "target_encoder": target.state_dict()}


def test_our_checkpoint_loads_every_part_and_records_its_verified_digests(tmp_path):
    tag, saved = our_checkpoint(tmp_path / "run", fixture_cfg(OFFICIAL))
    cfg = fixture_cfg(tag)
    init = plan_init(cfg, None)
    marker = json.loads((tag / "COMPLETE").read_text())["files"]
    assert init["kind"] == "checkpoint" and "epoch" not in init
    assert init["sha256"] == {STATES: marker[STATES]["sha256"]}
    assert init["loaded"] == {part: part for part in ("context_encoder", "predictor", "target_encoder")}
    model, target = loaded(init, cfg)
    assert all(torch.equal(v, saved["module"][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, saved["target_encoder"][k]) for k, v in target.state_dict().items())


def test_our_checkpoint_refusals(tmp_path):
    tag, _ = our_checkpoint(tmp_path / "run", fixture_cfg(OFFICIAL), num_heads=6)
    assert refused(fixture_cfg(tag)).endswith("its encoder has 6 attention heads, the config's model 3: set "
                                              "model.num_heads=6")
    text = refused(fixture_cfg(tmp_path / "run"))  # the run folder, not its checkpoint
    assert f"is a run folder, not a checkpoint: give one of its 1 checkpoint(s), e.g. the newest: --init-from {tag}" \
        in text
    assert "an official .pth.tar or an export folder" in refused(fixture_cfg(tmp_path))
    assert "resume it (--resume PATH)" in refused(fixture_cfg(tag, "checkpoint.init_continue=true",
                                                              "model.num_heads=6"))
    with open(tag / STATES, "r+b") as f:  # damaged since its save
        f.seek(100)
        f.write(b"\xff" * 8)
    assert "is damaged: " in refused(fixture_cfg(tag, "model.num_heads=6"))


# ------------------------------------------------------------------------------------------------ export folders

def test_an_export_folder_loads_its_encoder_as_context_and_target(tmp_path):
    ckpt = torch.load(OFFICIAL, weights_only=True)
    cfg = fixture_cfg(OFFICIAL)
    _, target = loaded(plan_init(cfg, None), cfg)
    out = tmp_path / "export"
    save_timm(target, out / "timm", IMAGENET_MEAN, IMAGENET_STD)  # export.py's timm folder: our names
    (out / "export.json").write_text(json.dumps({"encoder": "target", "architecture": {"num_heads": 3}}))
    cfg = fixture_cfg(out)
    init = plan_init(cfg, None)
    where = "timm/model.safetensors (target encoder)"
    assert init["kind"] == "export" and set(init["sha256"]) == {"export.json", "timm/model.safetensors"}
    assert init["loaded"] == {"context_encoder": where, "predictor": None, "target_encoder": where}
    model2, target2 = loaded(init, cfg)
    for name, value in target.state_dict().items():
        assert torch.equal(model2.context_encoder.state_dict()[name], value)
        assert torch.equal(target2.state_dict()[name], ckpt["target_encoder"]["module." + name])
    assert "it records no epoch" in refused(fixture_cfg(out, "checkpoint.init_continue=true"))
    assert refused(fixture_cfg(out, "model.num_heads=6")).endswith("set model.num_heads=3")
    (out / "export.json").write_text("{")
    assert "export.json cannot be read" in refused(cfg)


# ------------------------------------------------------------------------------------------------ init_continue

def test_init_continue_starts_at_the_epoch_with_the_loader_of_a_run_that_read_it(small_shards, tmp_path):
    """The fixture's file at epoch 1 × 12 steps per epoch (192 samples, 16 per step): step 12, and the next batches
    are those a loader gives after reading epoch 0: the same samples, crops and masks."""
    ckpt = torch.load(OFFICIAL, weights_only=True)
    path = tmp_path / "epoch1.pth.tar"
    torch.save({**ckpt, "epoch": 1}, path)
    sets = (f"data.shards={small_shards}", "data.batch_size=16", "data.num_workers=0", "data.backend=torch",
            "checkpoint.init_continue=true")
    cfg = fixture_cfg(path, *sets)
    plan = plan_run(cfg, 1)
    assert plan.init["epoch"] == 1 and plan.steps_per_epoch == 12
    started = build_training_loader(cfg, plan, 0, torch.device("cpu"), torch.float32)
    assert init_step(plan, started) == 12
    read = build_training_loader(cfg, plan, 0, torch.device("cpu"), torch.float32)
    it = iter(read)
    for _ in range(12):
        next(it)
    batches = iter(started)
    for got, want in [(next(batches), next(it)) for _ in range(2)]:
        assert got.keys == want.keys and torch.equal(got.images, want.images)
        assert torch.equal(got.ctx_idx, want.ctx_idx) and torch.equal(got.tgt_idx, want.tgt_idx)
    assert started.position() == (1, 32)
    short = plan_run(fixture_cfg(path, *sets, "optimization.max_steps=12"), 1)
    with pytest.raises(WarmStartError, match="nothing to do: the warm start goes on from step 12 .* "
                                             "optimization.max_steps is 12"):
        init_step(short, build_training_loader(cfg, short, 0, torch.device("cpu"), torch.float32))
    assert init_step(plan_run(fixture_cfg(path, *sets[:-1]), 1), None) == 0  # without init_continue: step 0


# ------------------------------------------------------------------------------------------------ the official keys

def official_yaml(tmp_path: Path, meta: str, logging: str = "") -> Path:
    text = (ROOT / "tests" / "fixtures" / "official_configs" / "in1k_vith14_ep300.yaml").read_text()
    text = text.replace("  load_checkpoint: false\n", meta).replace("  read_checkpoint: null\n", "")
    folder = f"  folder: {tmp_path / 'logs'}/\n" if not logging else logging
    text = text.replace("  folder: $replace_this_with_path_for_experiment_logs/vith14.224-bs.2048-ep.300/\n", folder)
    path = tmp_path / "official.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("meta, init_from", [
    ("  load_checkpoint: true\n  read_checkpoint: ep50.pth.tar\n", "{logs}/ep50.pth.tar"),
    ("  load_checkpoint: true\n  read_checkpoint: /data/ijepa/IN1K-vit.h.14-300e.pth.tar\n",
     "/data/ijepa/IN1K-vit.h.14-300e.pth.tar"),
    ("  load_checkpoint: true\n", "{logs}/jepa-latest.pth.tar"),  # the official code's latest_path
])
def test_official_load_checkpoint_is_a_warm_start_that_continues(tmp_path, meta, init_from):
    ckpt = load_config(official_yaml(tmp_path, meta)).checkpoint
    assert (ckpt.init_from, ckpt.init_continue, ckpt.resume) == (init_from.format(logs=tmp_path / "logs"), True,
                                                                 "auto")


def test_official_load_checkpoint_false_and_its_refusals(tmp_path):
    ckpt = load_config(official_yaml(tmp_path, "  load_checkpoint: false\n  read_checkpoint: x.pth.tar\n")).checkpoint
    assert (ckpt.init_from, ckpt.init_continue, ckpt.resume) == ("", False, "")
    cases = {
        "  load_checkpoint: 'yes'\n": "meta.load_checkpoint (official schema) is 'yes': expected true or false",
        "  load_checkpoint: true\n  read_checkpoint: 3\n": "meta.read_checkpoint (official schema) is 3",
    }
    for meta, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(official_yaml(tmp_path, meta))
    no_tag = official_yaml(tmp_path, "  load_checkpoint: true\n").read_text().replace("  write_tag: jepa\n", "")
    (tmp_path / "no_tag.yaml").write_text(no_tag)
    with pytest.raises(ConfigError, match="but logging.write_tag is None: set meta.read_checkpoint to the file"):
        load_config(tmp_path / "no_tag.yaml")
