"""export.py's main() in this process: the official fixture's context encoder exported into an empty folder, every
timm architecture we may name builds exactly our encoder; an occupied --out, a planted pickle, a missing checkpoint or
a failed verification is refused in one `error:` line, and leaves nothing behind. (The real CLI on a train.py
checkpoint, and the official fixture's target encoder: e2e/test_export_cli.py.)"""
import importlib
import re
import subprocess
from pathlib import Path

import timm
import torch
from checkpoint_files import OFFICIAL, STATES, Planted, our_client, tag_folder
from export_checks import EXPECTED, TOL, assert_exported, ours_on, transformers_tokens
from safetensors.torch import load_file

from model.ema import make_target_encoder
from model.export import TIMM_FALLBACK_ARCH, timm_architecture, timm_kwargs
from model.predictor import Predictor
from model.sizes import VIT_SIZES
from model.vit import VisionTransformer

export_cli = importlib.import_module("export")  # the entry script's main(), run in-process for the quick cases


def tiny_official(path: Path) -> Path:
    """A small official-format checkpoint (quick to load) at `path`."""
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3)  # vit_tiny width
    module = lambda m: {"module." + k: v for k, v in m.state_dict().items()}  # noqa: E731  DDP-style keys
    torch.save({"encoder": module(encoder), "predictor": module(Predictor(encoder.grid, 192, 24, 1, 3)),
                "target_encoder": module(make_target_encoder(encoder))}, path)
    return path


# --------------------------------------------------------------------------------------------- what is exported


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
