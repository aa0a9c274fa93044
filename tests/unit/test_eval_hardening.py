"""eval.py refuses what cannot give meaningful figures, in one `error:` line naming the file, folder or option, with
exit code 1 (2 for a config error) and no traceback: damaged or foreign checkpoints (of either kind), planted pickles
(which never run), shard folders whose class lists differ or that are unlabeled or empty, and options this machine
cannot honour. Every refusal runs eval.py's main() in this process (the real CLI on the tiny limits:
e2e/test_eval_cli.py)."""
import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_files import OFFICIAL, STATES, Planted, our_client, tag_folder
from PIL import Image

import shard_dataset
from pipeline import DataError
from pipeline.shards.format import read_samples
from pipeline.shards.manifest import list_shards

eval_cli = importlib.import_module("eval")  # the entry script's main(), run in-process for the many quick cases


def main_error(capsys, checkpoint, train, val, *extra, exit_code: int = 1) -> str:
    """eval.py's main() must exit `exit_code` (1; 2 for a config.ConfigError, a usage error) with exactly one `error:`
    line (an uncaught exception fails the test)."""
    code = eval_cli.main(["--checkpoint", str(checkpoint), "--train-shards", str(train), "--val-shards", str(val),
                          "--limit", "20", "--epochs", "1", *map(str, extra)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == exit_code and len(errors) == 1 and "Traceback" not in err, (code, err)
    return errors[0]


def assert_refused_without_running(capsys, checkpoint, shards, name: str, marker: Path, *extra):
    """eval.py's main() in this process refuses the planted file in one line naming `name`, and the pickle never ran
    (had it run here, it would have created `marker` all the same)."""
    line = main_error(capsys, checkpoint, shards["train"], shards["val"], *extra)
    assert name in line and "could run code" in line, line
    assert not marker.exists(), "the planted pickle ran"


def shard_folder(root: Path, classes, *options) -> Path:
    """A few random JPEGs per class folder, sharded by shard_dataset.py's main() in this process."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / "img" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "img" / name / f"{i}.jpg")
    assert shard_dataset.main([str(root / "img"), str(root / "shards"), "--no-progress", "--workers", "1",
                               *options]) == 0
    return root / "shards"


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory):
    """{"animals": labeled shards of other classes, "unlabeled": the same written with --labels none}."""
    root = tmp_path_factory.mktemp("other")
    return {"animals": shard_folder(root / "a", ["cat", "dog"]),
            "unlabeled": shard_folder(root / "u", ["cat", "dog"], "--labels", "none")}


# ------------------------------------------------------------------------------------- planted pickles never run

def test_planted_official_file_is_refused_and_never_runs(digit_shards, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "release.pth.tar"
    good = torch.load(OFFICIAL, weights_only=True)
    torch.save({**good, "opt": Planted(marker)}, path)  # the encoder parts are fine: only the extra object is hostile
    assert_refused_without_running(capsys, path, digit_shards, str(path), marker)


def test_planted_train_checkpoint_is_refused_and_never_runs(digit_shards, tmp_path, capsys):
    marker = tmp_path / "ran"
    tag = tag_folder(tmp_path, our_client(loader=Planted(marker)))
    assert_refused_without_running(capsys, tag, digit_shards, str(tag / STATES), marker)


def test_planted_zero_states_are_refused_and_never_run_for_the_context_encoder(digit_shards, tmp_path, capsys):
    """DeepSpeed's zero_to_fp32 unpickles with weights_only=False itself; eval.py forces weights_only around it."""
    marker = tmp_path / "ran"
    tag = tag_folder(tmp_path, our_client())
    optim = tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": Planted(marker)}}, optim)
    assert_refused_without_running(capsys, tag, digit_shards, str(tag), marker, "--encoder", "context")


# ------------------------------------------------------------------------------------------ damaged checkpoints

def official_variant(path: Path, part: str, key: str, value) -> Path:
    """The tiny official checkpoint with one entry of one part replaced (value None: removed)."""
    ckpt = torch.load(OFFICIAL, weights_only=True)
    ckpt[part] = dict(ckpt[part])
    if value is None:
        del ckpt[part][key]
    else:
        ckpt[part][key] = value
    torch.save(ckpt, path)
    return path


OFFICIAL_DAMAGE = {  # name → (make the file at path, what the error line must say)
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "truncated": (lambda p: p.write_bytes(OFFICIAL.read_bytes()[:5000]), "not a readable torch checkpoint"),
    "text": (lambda p: p.write_text("hello"), "not a readable torch checkpoint"),
    "not_a_dict": (lambda p: torch.save([1, 2, 3], p), "not in the official I-JEPA format"),
    "missing_key": (lambda p: official_variant(p, "predictor", "module.mask_token", None), "missing key 'mask_token'"),
    "non_dict_state": (lambda p: official_variant(p, "encoder", "module.pos_embed", "x"), "not a tensor"),
    "mask_token_shape": (lambda p: official_variant(p, "predictor", "module.mask_token", torch.zeros(1, 1, 7)),
                         "mask_token has shape (1, 1, 7), expected (1, 1, 96)"),
    "pos_embed_shape": (lambda p: official_variant(p, "target_encoder", "module.pos_embed", torch.zeros(1, 9, 192)),
                        "pos_embed is (1, 9, 192), not (1, 64, 192)"),
    "other_architecture": (lambda p: torch.save({k: {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(
        10)} for k in ("encoder", "predictor", "target_encoder")}, p), "missing key 'patch_embed.proj.weight'"),
    "nan_weights": (lambda p: official_variant(p, "target_encoder", "module.norm.weight", torch.full((192,), np.nan)),
                    "hold NaN or inf (first: norm.weight)"),
    "a_fifo": (lambda p: os.mkfifo(p), "is not a regular file"),
}


@pytest.mark.parametrize("damage", sorted(OFFICIAL_DAMAGE))
def test_damaged_official_file_is_one_error_line(digit_shards, tmp_path, capsys, damage):
    make, message = OFFICIAL_DAMAGE[damage]
    path = tmp_path / f"{damage}.pth.tar"
    make(path)
    line = main_error(capsys, path, digit_shards["train"], digit_shards["val"])
    assert str(path) in line and message in line, line


def garbage_folder(tmp_path: Path) -> Path:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.bin").write_bytes(os.urandom(100))
    (tmp_path / "junk" / STATES).write_bytes(os.urandom(100))
    return tmp_path / "junk"


def garbage_states(tmp_path: Path) -> Path:
    tag = tag_folder(tmp_path)
    (tag / STATES).write_bytes(os.urandom(300))
    return tag


OURS_DAMAGE = {  # name → (make the folder under tmp_path and return the path to give, what the error must say)
    "no_complete_marker": (lambda t: tag_folder(t, our_client(), complete=False), "is incomplete"),
    "garbage_folder": (garbage_folder, "not a checkpoint of train.py"),
    "the_checkpoints_folder": (lambda t: tag_folder(t, our_client()).parent, "--checkpoint "),
    "the_run_folder": (lambda t: tag_folder(t, our_client()).parent.parent, "step00000010"),
    "no_states_file": (lambda t: tag_folder(t), "no DeepSpeed model states"),
    "empty_states_file": (lambda t: (tag_folder(t) / STATES).touch() or t / "checkpoints" / "step00000010",
                          "the file is empty (0 bytes)"),
    "garbage_states_file": (garbage_states, STATES),
    "states_not_a_dict": (lambda t: tag_folder(t, [1, 2]), "not the dict of states"),
    "no_config": (lambda t: tag_folder(t, {"target_encoder": {}}), "holds no saved config"),
    "config_not_yaml": (lambda t: tag_folder(t, our_client(config="a: [b")), "not valid YAML"),
    "config_not_a_mapping": (lambda t: tag_folder(t, our_client(config="- 1")), "not a mapping of sections"),
    "config_wrong_key": (lambda t: tag_folder(t, our_client(config="run: {nme: x}")), "nme"),
    "target_not_a_dict": (lambda t: tag_folder(t, our_client(target_encoder=5)), "not a state dict"),
    "target_other_shapes": (lambda t: tag_folder(t, our_client(target_encoder={
        **our_client()["target_encoder"], "pos_embed": torch.zeros(1, 4, 96)})), "pos_embed is (1, 4, 96)"),
    "context_without_zero_states": (lambda t: tag_folder(t, our_client()), "DeepSpeed cannot rebuild"),
}


@pytest.mark.parametrize("damage", sorted(OURS_DAMAGE))
def test_damaged_train_checkpoint_is_one_error_line(digit_shards, tmp_path, capsys, damage):
    make, message = OURS_DAMAGE[damage]
    path = make(tmp_path)
    extra = ["--encoder", "context"] if damage.startswith("context") else []
    exit_code = 2 if damage == "config_wrong_key" else 1  # a key the schema lacks: config.ConfigError
    line = main_error(capsys, path, digit_shards["train"], digit_shards["val"], *extra, exit_code=exit_code)
    assert str(tmp_path) in line and message in line, line


def test_hand_built_train_checkpoint_evaluates(digit_shards, tmp_path, capsys):
    """The same layout, undamaged, loads with weights_only=True and gives figures (so the refusals are not all); a
    shard folder may be given by its manifest, as read_manifest allows."""
    tag = tag_folder(tmp_path, our_client())
    out = tmp_path / "probe.json"
    code = eval_cli.main(["--checkpoint", str(tag), "--train-shards", str(digit_shards["train"] / "manifest.json"),
                          "--val-shards", str(digit_shards["val"]), "--limit", "30", "--epochs", "1", "--json",
                          str(out)])
    assert code == 0, capsys.readouterr().err
    setup = json.loads(out.read_text())["setup"]
    assert {k: setup[k] for k in ("checkpoint", "encoder", "pool", "train_images", "val_images", "classes")} == {
        "checkpoint": str(tag), "encoder": "target", "pool": "avg", "train_images": 30, "val_images": 30,
        "classes": 10}


# ---------------------------------------------------------------------------------------- shards and options

def reordered(digit_shards, tmp_path) -> Path:
    """The val digits with their manifest's class list reversed: the same names, other labels."""
    dest = shutil.copytree(digit_shards["val"], tmp_path / "val")
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][::-1]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_class_lists_that_differ_are_refused_naming_the_difference(digit_shards, other_shards, tmp_path, capsys):
    line = main_error(capsys, OFFICIAL, digit_shards["train"], other_shards["animals"])
    assert f"train shards {digit_shards['train']} (10 classes)" in line
    assert f"val shards {other_shards['animals']} (2 classes)" in line
    assert "only in train: 'digit_0', 'digit_1', 'digit_2' and 7 more; only in val: 'cat', 'dog'" in line
    line = main_error(capsys, OFFICIAL, digit_shards["train"], reordered(digit_shards, tmp_path))
    assert "the same names in another order (label 0 is 'digit_0' in train, 'digit_9' in val)" in line


def test_unlabeled_empty_and_missing_shard_folders_are_named(digit_shards, other_shards, tmp_path, capsys):
    val = digit_shards["val"]
    line = main_error(capsys, OFFICIAL, other_shards["unlabeled"], val)
    assert str(other_shards["unlabeled"]) in line and "unlabeled shards" in line
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        line = main_error(capsys, OFFICIAL, folder, val)
        assert str(folder / "manifest.json") in line and "cannot read the manifest" in line


def test_damaged_samples_are_named_by_shard_and_key(digit_shards, tmp_path):
    from evaluation.features import eval_images

    for member in ("jpg", "cls"):
        dest = shutil.copytree(digit_shards["val"], tmp_path / member)
        ref = read_samples(list_shards(dest))[0][3]
        span = getattr(ref, member)
        with open(ref.shard, "r+b") as f:  # same size: the manifest's size check still passes
            f.seek(span[0])
            f.write(b"x" * span[1])
        with pytest.raises(DataError) as err:
            eval_images(dest, 32)
        assert "\n" not in str(err.value) and f"{ref.shard}: sample {ref.key}" in str(err.value), str(err.value)


@pytest.mark.parametrize("option, value", [("--limit", "0"), ("--limit", "-5"), ("--epochs", "0"),
                                           ("--limit", "ten"), ("--attentive-epochs", "0"), ("--low-shot", "0%"),
                                           ("--low-shot", "150%"), ("--low-shot", "few"), ("--cache-gb", "0"),
                                           ("--cache-gb", "nan"), ("--cache-gb", "inf")])
def test_numbers_out_of_range_are_usage_errors(digit_shards, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        eval_cli.main(["--checkpoint", str(OFFICIAL), "--train-shards", str(digit_shards["train"]), "--val-shards",
                       str(digit_shards["val"]), option, value])
    assert exit_.value.code == 2 and f"argument {option}:" in capsys.readouterr().err


def test_devices_and_json_paths_are_checked_before_any_work(digit_shards, tmp_path, capsys):
    shards = (digit_shards["train"], digit_shards["val"])
    cases = [(["--device", "banana"], "--device banana: not a device name"),
             (["--device", "meta"], "--device meta: the encoders run on cpu or cuda only"),
             (["--device", "cuda:99"], "--device cuda:99: "),
             (["--json", tmp_path / "nowhere" / "probe.json"], "does not exist; create it first"),
             (["--json", tmp_path], "is a folder; give a file name"),
             (["--json", OFFICIAL], "would overwrite the checkpoint input"),
             (["--json", digit_shards["val"] / "manifest.json"], "would overwrite the val-shards input")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: no CUDA device is available here; use --device cpu"))
    for extra, message in cases:
        assert message in main_error(capsys, OFFICIAL, *shards, *extra), extra
    assert "--checkpoint is empty; give a path" in main_error(capsys, "", *shards)
    assert "--val-shards: htps://host/val has the scheme 'htps'" in main_error(capsys, OFFICIAL, shards[0],
                                                                                "htps://host/val")
    assert json.loads((digit_shards["val"] / "manifest.json").read_text())["classes"]  # not overwritten
