"""export.py writes a transformers I-JEPA folder and a timm folder that their libraries load offline and that give our
encoder's output tokens within 1e-5 on real images, for train.py checkpoints (the real CLI in a fresh interpreter) and
official-format files alike; every weight file is safetensors. (export.py's main() in this process, its other
encoder and its refusals: unit/test_export.py.)"""
import contextlib
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from checkpoint_files import OFFICIAL, STATES, our_client, tag_folder
from export_checks import EXPECTED, TOL, assert_exported, ours_on, transformers_tokens
from safetensors.torch import load_file

from evaluation.encoders import load_encoder
from evaluation.features import eval_images
from model.export import TIMM_FALLBACK_ARCH
from model.inputs import imagenet_stats
from model.official import load_strict
from model.vit import VisionTransformer

ROOT = Path(__file__).resolve().parents[2]
export_cli = importlib.import_module("export")  # the entry script's main(), run in-process for the official file


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A hand-made train.py checkpoint exported by the real CLI in a fresh interpreter, as a user runs it, while the
    official-format fixture is exported by its main() in this one (both at once: the first is mostly start-up).
    {"ours"|"official": (checkpoint, out, finished process)}."""
    root = tmp_path_factory.mktemp("export")
    tag = tag_folder(root / "run", our_client())
    logs = {name: root / f"ours.{name}" for name in ("stdout", "stderr")}  # files: a full pipe would block it
    with logs["stdout"].open("w") as stdout, logs["stderr"].open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "export.py", "--checkpoint", str(tag), "--out", str(root / "ours")],
                                cwd=ROOT, stdout=stdout, stderr=stderr)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = export_cli.main(["--checkpoint", str(OFFICIAL), "--out", str(root / "official")])
        official = subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())
        returncode = proc.wait(timeout=300)
    ours = subprocess.CompletedProcess(proc.args, returncode, logs["stdout"].read_text(), logs["stderr"].read_text())
    return {"ours": (tag, root / "ours", ours), "official": (OFFICIAL, root / "official", official)}


def timm_model(folder: Path):
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def check_timm_folder(folder: Path, encoder, images: torch.Tensor) -> None:
    """timm builds exactly our encoder (no class token, average pool, no fc_norm, no head) and its weights are ours;
    its model.safetensors loads strictly into our VisionTransformer."""
    model = timm_model(folder)
    data = timm.data.resolve_data_config(model=model)  # the eval transform our probes use
    assert data["input_size"] == tuple(images.shape[1:]) and data["crop_pct"] == 0.875
    assert torch.allclose(torch.tensor(data["mean"]) * 255, imagenet_stats("cpu")[0].flatten())
    assert torch.allclose(torch.tensor(data["std"]) * 255, imagenet_stats("cpu")[1].flatten())
    assert model.cls_token is None and model.global_pool == "avg" and model.num_prefix_tokens == 0
    assert isinstance(model.fc_norm, torch.nn.Identity) and isinstance(model.head, torch.nn.Identity)
    want = ours_on(images, encoder)
    with torch.no_grad():
        assert (model.forward_features(images) - want).abs().max() <= TOL
        assert (model(images) - want.mean(1)).abs().max() <= TOL
    state = load_file(folder / "model.safetensors")
    arch = json.loads((folder / "config.json").read_text())["model_args"]
    ours = VisionTransformer(img_size=arch["img_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"],
                             depth=arch["depth"], num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"])
    load_strict(ours, state, str(folder / "model.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())


def digit_batch(shards: Path, size: int, limit: int = 16) -> torch.Tensor:
    """Real digit images through the eval transform, normalised as the probes feed them."""
    images, _ = eval_images(shards, size, limit)
    mean, std = imagenet_stats("cpu")
    return (images.float() - mean) / std


def test_train_checkpoint_exports_to_transformers_and_timm(exports, digit_shards):
    tag, out, proc = exports["ours"]
    record = assert_exported(proc, out, "target")
    assert record["source"] == str(tag.resolve())
    encoder, random_init = load_encoder(tag)
    images = digit_batch(digit_shards["val"], encoder.grid[0] * encoder.patch_embed.patch_size[0])
    want = ours_on(images, encoder)
    theirs = transformers_tokens(out, images)
    assert theirs.shape == want.shape and (theirs - want).abs().max() <= TOL
    assert (ours_on(images, random_init) - want).abs().max() > 1e-2  # the figures tell the trained weights apart
    check_timm_folder(out / "timm", encoder, images)
    saved = torch.load(tag / STATES, weights_only=True)["target_encoder"]  # the checkpoint's own tensors
    state = load_file(out / "timm" / "model.safetensors")
    assert state.keys() == saved.keys() and all(torch.equal(state[k], v) for k, v in saved.items())


def test_official_checkpoint_exports_its_target_encoder(exports, official):
    _, out, proc = exports["official"]
    record = assert_exported(proc, out, "target")
    assert record["architecture"]["embed_dim"] == 192 and record["source"] == str(OFFICIAL.resolve())
    assert record["formats"]["timm"]["architecture"] == TIMM_FALLBACK_ARCH  # not an official size
    expected = torch.load(EXPECTED)
    theirs = transformers_tokens(out, expected["images"])
    assert (theirs - expected["target_encoder_out"]).abs().max() <= TOL  # the official code's own outputs
    check_timm_folder(out / "timm", official[1], expected["images"])
