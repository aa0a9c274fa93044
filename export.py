"""A checkpoint's encoder as a transformers I-JEPA model folder and a timm model folder, each verified against ours.

    python export.py --checkpoint runs/demo/train/checkpoints/step00000500 --out runs/demo/export [--encoder target]

CHECKPOINT is a checkpoint folder written by train.py or a file in the official I-JEPA release format; either loads
with weights_only=True, so a file that would run code when unpickled is refused. The TARGET (EMA) encoder is exported
by default, as the paper evaluates it; --encoder context exports the context encoder. OUT receives

    OUT/config.json, OUT/model.safetensors            IJepaModel.from_pretrained("OUT")
    OUT/timm/config.json, OUT/timm/model.safetensors  timm.create_model("local-dir:OUT/timm", pretrained=True)
    OUT/export.json                                   the source, the encoder, its architecture, the max |Δ| figures

Weights are safetensors (tensors only, no pickle). Before OUT appears, both folders are reloaded by their libraries
and must give our encoder's output tokens within 1e-5 on two seeded images. OUT must be new or an empty folder: it is
written whole under a temporary name beside it and renamed at the end, never overwritten, never left half-written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from evaluation.encoders import load_encoder
from model.export import TIMM_FALLBACK_ARCH, ExportError
from model.inputs import IMAGENET_MEAN, IMAGENET_STD
from util.cli import HelpFormatter
from util.errors import UserError
from util.files import fsync_dir, fsync_tree, partial_name
from util.processes import exit_without_teardown

logger = logging.getLogger(__name__)
TOLERANCE = 1e-5  # max |Δ| of the reloaded models' output tokens against ours
TIMM_SUBFOLDER = "timm"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="train.py checkpoint folder, or an official-format file")
    p.add_argument("--out", required=True, help="new (or empty) folder the model folders are written to")
    p.add_argument("--encoder", choices=("target", "context"), default="target")
    return p.parse_args(argv)


def check_out(out: str, checkpoint: str) -> Path:
    """OUT must be new or an empty folder, in an existing folder, and not inside the checkpoint (good data is never
    overwritten)."""
    for option, value in (("--checkpoint", checkpoint), ("--out", out)):
        if not value.strip():  # Path("") is the current folder: say what was given instead
            raise ExportError(f"{option} is empty; give a path")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ExportError(f"--out {path}: is a file; give a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise ExportError(f"--out {path}: already holds files; export.py never overwrites: give a new or empty folder")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise ExportError(f"--out {path}: its folder {parent} does not exist; create it first")
    source = Path(checkpoint).resolve()
    if path.resolve() == source or source in path.resolve().parents:
        raise ExportError(f"--out {path}: is inside the checkpoint {checkpoint}; write the export elsewhere")
    return path


def quiet_libraries() -> None:
    """transformers' progress bars and advice would bury the summary; its errors still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def write_and_verify(encoder, folder: Path, out: Path) -> dict:
    """Writes both formats into `folder` and reloads them there; returns the figures per format (load lines name
    `out`, where the folder will be). Raises ExportError when a reload differs from ours by more than TOLERANCE."""
    import timm
    import transformers

    from model.export import sample_images, save_timm, save_transformers, timm_gap, transformers_gap

    save_transformers(encoder, folder)
    architecture = save_timm(encoder, folder / TIMM_SUBFOLDER, IMAGENET_MEAN, IMAGENET_STD)
    images = sample_images(encoder, count=2, seed=0)
    formats = {
        "transformers": {"files": ["config.json", "model.safetensors"], "version": transformers.__version__,
                         "load": f"IJepaModel.from_pretrained({json.dumps(str(out))})",
                         "max_abs_diff": transformers_gap(encoder, folder, images)},
        "timm": {"files": [f"{TIMM_SUBFOLDER}/config.json", f"{TIMM_SUBFOLDER}/model.safetensors"],
                 "version": timm.__version__, "architecture": architecture,
                 "load": f"timm.create_model({json.dumps(f'local-dir:{out / TIMM_SUBFOLDER}')}, pretrained=True)",
                 "max_abs_diff": timm_gap(encoder, folder / TIMM_SUBFOLDER, images)},
    }
    for name, result in formats.items():
        if not result["max_abs_diff"] <= TOLERANCE:  # also catches NaN
            raise ExportError(f"{name} export: its reloaded model differs from our encoder by max |Δ| "
                              f"{result['max_abs_diff']:.3g} > {TOLERANCE:g} on 2 seeded images; nothing was written")
    return formats


def describe(encoder) -> dict:
    """The encoder's architecture, as export.json records it."""
    patch = encoder.patch_embed.patch_size[0]
    return {"embed_dim": encoder.embed_dim, "depth": len(encoder.blocks), "num_heads": encoder.num_heads,
            "mlp_ratio": encoder.mlp_ratio, "img_size": encoder.grid[0] * patch, "patch_size": patch,
            "in_chans": encoder.patch_embed.proj.in_channels}


def model_name(result: dict, arch: dict) -> str:
    """The timm architecture when it is timm's own name for this size; else the sizes (the folder's config.json
    builds timm's generic ViT with them)."""
    if result["architecture"] != TIMM_FALLBACK_ARCH:
        return result["architecture"]
    return (f"ViT {arch['embed_dim']} wide, {arch['depth']} deep, {arch['num_heads']} heads, patch "
            f"{arch['patch_size']} at {arch['img_size']} px")


def run(checkpoint: str, out: str, which: str) -> dict:
    """Loads, writes under a temporary name beside OUT, verifies, renames; returns what export.json holds."""
    path = check_out(out, checkpoint)
    encoder, _ = load_encoder(checkpoint, which)
    quiet_libraries()
    target = Path(os.path.abspath(path))  # "out/.." → its real name, symlinks left as they are
    staging = target.parent / partial_name(target.name)
    try:
        staging.mkdir()
        record = {"source": str(Path(checkpoint).resolve()), "encoder": which, "architecture": describe(encoder),
                  "verification": {"images": "2 × torch.randn at the encoder's size, torch.Generator seed 0",
                                   "tolerance": TOLERANCE},
                  "formats": write_and_verify(encoder, staging, path)}
        (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
        fsync_tree(staging)
        fsync_dir(staging / TIMM_SUBFOLDER)
        os.replace(staging, target)  # an empty OUT is replaced; one that gained files meanwhile makes this fail
        fsync_dir(target.parent)
    except OSError as err:
        raise ExportError(f"--out {path}: cannot be written ({err.strerror or err}); nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a model hub
    # torch's advice on a damaged file's pickle protocol; the file is then refused in one line of ours
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    args = parse_args(argv)
    try:
        record = run(args.checkpoint, args.out, args.encoder)
    except UserError as err:  # the user's checkpoint or options: one line naming the file and the fix
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for name, result in record["formats"].items():
        label = f"{name} ({model_name(result, record['architecture'])})" if "architecture" in result else name
        print(f"{label}: max |Δ| {result['max_abs_diff']:.2e} vs our {args.encoder} encoder (≤ {TOLERANCE:g})  "
              f"→  {result['load']}")
    print(f"wrote {args.out} (export.json records the source and these figures)")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
