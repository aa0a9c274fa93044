"""export.py writes a transformers I-JEPA folder and a timm folder that their libraries load offline and that give our
encoder's output tokens within 1e-5 on real images, for train.py checkpoints and official-format files alike; every
weight file is safetensors; an occupied --out, a planted pickle, a missing checkpoint or a failed verification is
refused in one `error:` line, and leaves nothing behind."""
import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_eval_hardening import OFFICIAL, STATES, Planted, our_client, tag_folder

from evaluation.encoders import load_encoder
from evaluation.features import eval_images
from model.ema import make_target_encoder
from model.export import TIMM_FALLBACK_ARCH, timm_architecture, timm_kwargs
from model.inputs import imagenet_stats
from model.official import load_official_checkpoint, load_strict
from model.predictor import Predictor
from model.sizes import VIT_SIZES
from model.vit import VisionTransformer

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = OFFICIAL.parent / "expected.pt"
FILES = ["config.json", "export.json", "model.safetensors", "timm/config.json", "timm/model.safetensors"]
TOL = 1e-5
export_cli = importlib.import_module("export")  # the entry script's main(), run in-process for the quick cases


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


@pytest.fixture(scope="module")
def official():
    """The official fixture's (context encoder, target encoder), loaded once."""
    encoder, _, target = load_official_checkpoint(OFFICIAL)
    return encoder.eval(), target.eval()


def tiny_official(path: Path) -> Path:
    """A small official-format checkpoint (quick to load) at `path`."""
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3)  # vit_tiny width
    module = lambda m: {"module." + k: v for k, v in m.state_dict().items()}  # noqa: E731  DDP-style keys
    torch.save({"encoder": module(encoder), "predictor": module(Predictor(encoder.grid, 192, 24, 1, 3)),
                "target_encoder": module(make_target_encoder(encoder))}, path)
    return path


def ours_on(images: torch.Tensor, encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(images)


def transformers_tokens(folder: Path, images: torch.Tensor) -> torch.Tensor:
    from transformers import IJepaModel

    model, info = IJepaModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        return model.eval()(pixel_values=images).last_hidden_state


def timm_model(folder: Path):
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def assert_safetensors(path: Path) -> None:
    """A safetensors file, byte for byte: an 8-byte header length, a JSON header whose tensors tile the rest of the
    file exactly; so no pickle (nor torch's zip) hides in it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
    assert tensors and 8 + n + max(entry["data_offsets"][1] for entry in tensors.values()) == len(raw), path
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(tensors)


def assert_exported(proc, out: Path, which: str) -> dict:
    """The CLI succeeded, printed one line per format with its figure and load line, and wrote exactly FILES, every
    weight file a safetensors file. Returns export.json."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("transformers:") and f'IJepaModel.from_pretrained("{out}")' in line for line in lines)
    assert any(line.startswith("timm (") and f'timm.create_model("local-dir:{out / "timm"}", pretrained=True)' in line
               for line in lines), proc.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == FILES
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    for name in ("model.safetensors", "timm/model.safetensors"):
        assert_safetensors(out / name)
    record = json.loads((out / "export.json").read_text())
    assert record["encoder"] == which
    assert all(0 <= f["max_abs_diff"] <= TOL for f in record["formats"].values()), record
    return record


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


# --------------------------------------------------------------------------------------------- what is exported

@pytest.mark.slow
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


@pytest.mark.slow
def test_official_checkpoint_exports_its_target_encoder(exports, official):
    _, out, proc = exports["official"]
    record = assert_exported(proc, out, "target")
    assert record["architecture"]["embed_dim"] == 192 and record["source"] == str(OFFICIAL.resolve())
    assert record["formats"]["timm"]["architecture"] == TIMM_FALLBACK_ARCH  # not an official size
    expected = torch.load(EXPECTED)
    theirs = transformers_tokens(out, expected["images"])
    assert (theirs - expected["target_encoder_out"]).abs().max() <= TOL  # the official code's own outputs
    check_timm_folder(out / "timm", official[1], expected["images"])


def test_context_encoder_export_into_an_empty_folder(tmp_path, capsys, official):
    out = tmp_path / "context"
    out.mkdir()  # an empty folder is accepted
    assert export_cli.main(["--checkpoint", str(OFFICIAL), "--out", str(out), "--encoder", "context"]) == 0
    printed = capsys.readouterr()
    assert_exported(subprocess.CompletedProcess([], 0, printed.out, printed.err), out, "context")
    images = torch.load(EXPECTED)["images"]
    context, target = official
    theirs = transformers_tokens(out, images)
    assert (theirs - ours_on(images, context)).abs().max() <= TOL
    assert (theirs - ours_on(images, target)).abs().max() > 1e-3
    state = load_file(out / "timm" / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in context.state_dict().items())


def test_every_timm_architecture_we_may_name_builds_exactly_our_encoder():
    """The config.json names timm's I-JEPA architecture for an official size (or the fallback); with our model_args
    each such name must build our encoder exactly: same weights, same tokens, average-pooled."""
    with torch.device("meta"):
        vith14 = VisionTransformer(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16)
    assert timm_architecture(vith14) == "vit_huge_patch14_gap_224"  # the architecture of timm's in1k_ijepa weights
    small = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    assert timm_architecture(small) == TIMM_FALLBACK_ARCH
    pattern = re.compile(rf"({'|'.join(VIT_SIZES)})_patch\d+_gap_\d+")
    names = [n for n in timm.list_models("vit_*_gap_*") if pattern.fullmatch(n)]
    assert TIMM_FALLBACK_ARCH in names and "vit_huge_patch14_gap_224" in names
    images = torch.randn(2, 3, 32, 32)
    want = ours_on(images, small)
    for name in names:
        model = timm.create_model(name, pretrained=False, **timm_kwargs(small)).eval()
        model.load_state_dict(small.state_dict(), strict=True)
        with torch.no_grad():
            assert (model.forward_features(images) - want).abs().max() <= TOL, name
            assert (model(images) - want.mean(1)).abs().max() <= TOL, name


# ----------------------------------------------------------------------------------------------------- refusals

def main_error(capsys, *argv) -> str:
    """export.py's main() must exit 1 with exactly one `error:` line (an uncaught exception fails the test)."""
    code = export_cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_an_occupied_out_folder_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine\n")
    line = main_error(capsys, "--checkpoint", OFFICIAL, "--out", out)
    assert str(out) in line and "never overwrites" in line
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    line = main_error(capsys, "--checkpoint", OFFICIAL, "--out", tmp_path / "no" / "such" / "out")
    assert "does not exist" in line and not (tmp_path / "no").exists()


def test_planted_pickles_are_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    planted = tmp_path / "release.pth.tar"
    torch.save({**torch.load(OFFICIAL, weights_only=True), "opt": Planted(marker)}, planted)
    line = main_error(capsys, "--checkpoint", planted, "--out", tmp_path / "a")
    assert str(planted) in line and "could run code" in line
    tag = tag_folder(tmp_path / "run", our_client(loader=Planted(marker)))
    line = main_error(capsys, "--checkpoint", tag, "--out", tmp_path / "b")
    assert str(tag / STATES) in line and "could run code" in line
    assert not marker.exists(), "the planted pickle ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.pth.tar", "run"]


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
    line = main_error(capsys, "--checkpoint", tmp_path / "missing.pth.tar", "--out", tmp_path / "out")
    assert str(tmp_path / "missing.pth.tar") in line and "not found" in line
    assert not (tmp_path / "out").exists()


def test_a_failed_verification_is_an_error_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """q and k swapped in the transformers weights: the folder loads, but its tokens differ, so nothing is kept."""
    import model.export as export_lib

    real = export_lib.transformers_state_dict

    def swapped(encoder):
        state = real(encoder)
        for key in [k for k in state if ".q_proj." in k]:
            other = key.replace(".q_proj.", ".k_proj.")
            state[key], state[other] = state[other], state[key]
        return state

    monkeypatch.setattr(export_lib, "transformers_state_dict", swapped)
    checkpoint = tiny_official(tmp_path / "tiny.pth.tar")
    line = main_error(capsys, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert "transformers export" in line and "differs from our encoder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pth.tar"]  # neither the folder nor its temporary sibling
