"""Configuration: typed loading, errors that name file/section/key, official configs, overrides, round trip."""
import contextlib
import dataclasses
import io
import logging
import traceback
from pathlib import Path

import pytest
import yaml

from config import ConfigError, config_from_dict, config_to_yaml, grid_size, load_config
from model.sizes import encoder_size
from pipeline import DataError
from training.engine import deepspeed_config
from training.plan import BatchLayout, fresh_layout, schedule_steps

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ROOT / "tests" / "fixtures" / "official_configs"
OUR_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def print_config(path, *sets):
    """`train.py --config PATH --print-config [--set ...]` through train.py's main in this process (the real CLI in a
    fresh interpreter: e2e/test_train_hardening.py's issue examples); returns (exit code, stdout, what it logged)."""
    import train

    argv = ["--config", str(path), "--print-config"]
    for s in sets:
        argv += ["--set", s]
    out, log, root = io.StringIO(), io.StringIO(), logging.getLogger()
    handler, level = logging.StreamHandler(log), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            code = train.main(argv)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return code, out.getvalue(), log.getvalue()


# What each official file must map to: batch, crop, patch, model, predictor depth/width, masks, EMA, lrs, wds, epochs.
OFFICIAL_EXPECTED = {
    "in1k_vith14_ep300.yaml": dict(batch=128, crop=224, patch=14, arch="vit_huge", pred_depth=12, epochs=300, warmup=40),
    "in1k_vith16-448_ep300.yaml": dict(batch=16, crop=448, patch=16, arch="vit_huge", pred_depth=12, epochs=300,
                                       warmup=40),
    "in22k_vitg16_ep44.yaml": dict(batch=16, crop=224, patch=16, arch="vit_giant", pred_depth=16, epochs=44, warmup=3),
    "in22k_vith14_ep66.yaml": dict(batch=32, crop=224, patch=14, arch="vit_huge", pred_depth=12, epochs=66, warmup=3),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_EXPECTED))
def test_official_config_maps_every_value(name):
    code, out, err = print_config(OFFICIAL / name)
    assert code == 0, err
    got = yaml.safe_load(out)
    want = OFFICIAL_EXPECTED[name]
    assert got["data"]["batch_size"] == want["batch"]
    assert got["data"]["crop_size"] == want["crop"]
    assert got["data"]["crop_scale"] == [0.3, 1.0]
    assert got["model"]["patch_size"] == want["patch"]
    assert got["model"]["arch"] == want["arch"]
    assert got["model"]["pred_depth"] == want["pred_depth"]
    assert got["model"]["pred_emb_dim"] == 384
    assert got["mask"]["enc_mask_scale"] == [0.85, 1.0]
    assert got["mask"]["pred_mask_scale"] == [0.15, 0.2]
    assert got["mask"]["aspect_ratio"] == [0.75, 1.5]
    assert (got["mask"]["nenc"], got["mask"]["npred"], got["mask"]["min_keep"]) == (1, 4, 10)
    assert got["mask"]["allow_overlap"] is False
    assert got["ema"]["momentum"] == [0.996, 1.0]
    opt = got["optimization"]
    assert (opt["start_lr"], opt["lr"], opt["final_lr"]) == (2e-4, 1e-3, 1e-6)
    assert (opt["weight_decay"], opt["final_weight_decay"]) == (0.04, 0.4)
    assert (opt["epochs"], opt["warmup_epochs"], opt["ipe_scale"]) == (want["epochs"], want["warmup"], 1.0)
    assert opt["precision"] == "bf16"
    # the keys that mean nothing here are named, with what to set instead
    assert "data.image_folder" in err and "data.shards" in err


def test_paper_recipe_config():
    cfg = load_config(ROOT / "configs" / "vith14_in1k.yaml")
    official = load_config(OFFICIAL / "in1k_vith14_ep300.yaml")
    for section in ("mask", "optimization", "ema"):
        ours = getattr(cfg, section)
        if section == "optimization":  # the official code trains at its per-GPU batch on its 16 GPUs: 2048
            assert (ours.global_batch, official.optimization.global_batch) == (16 * official.data.batch_size, 0)
            ours = dataclasses.replace(ours, global_batch=0)
        assert ours == getattr(official, section), section
    assert (cfg.model.arch, cfg.model.patch_size, cfg.data.crop_size, cfg.data.batch_size) == ("vit_huge", 14, 224, 128)
    assert encoder_size(cfg.model) == (1280, 32, 16, 4.0)
    assert grid_size(cfg) == (16, 16)
    assert cfg.deepspeed["zero_optimization"]["stage"] == 2
    assert cfg.optimization.precision == "bf16"


def test_misspelled_key_names_key_section_file_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "vith14_in1k.yaml").read_text().replace("min_keep:", "min_kep:"))
    code, out, err = print_config(bad)
    assert code != 0 and out == ""
    assert str(bad) in err and "'mask'" in err and "'min_kep'" in err and "did you mean 'min_keep'" in err


def test_wrong_type_names_key_section_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "vith14_in1k.yaml").read_text().replace("batch_size: 128", "batch_size: many"))
    code, out, err = print_config(bad)
    assert code != 0 and out == ""
    assert str(bad) in err and "data.batch_size" in err and "'many'" in err and "integer" in err


@pytest.mark.parametrize("section, key, value, message", [
    ("data", "crop_size", True, "expected an integer"),
    ("data", "crop_size", 12.5, "expected an integer"),
    ("data", "batch_size", True, r"data.batch_size is True; allowed: an integer >= 1 and <= 65536, or auto"),
    ("data", "batch_size", 12.5, r"data.batch_size is 12.5; allowed: an integer >= 1 and <= 65536, or auto"),
    ("data", "batch_size", "automatic", r"data.batch_size is 'automatic'; allowed: an integer"),
    ("data", "batch_size", "auto", r"data.batch_size auto needs optimization.global_batch"),
    ("optimization", "grad_accum", 2, None),
    ("checkpoint", "keep_best", True, "checkpoint.keep_best needs the in-training kNN probe"),
    ("checkpoint", "init_continue", True, "checkpoint.init_continue is true but checkpoint.init_from is empty"),
    ("optimization", "lr", "fast", "expected a number"),
    ("mask", "allow_overlap", "no", "expected true or false"),
    ("data", "crop_scale", [0.3], "list of 2"),
    ("data", "backend", "jax", "not one of"),
    ("model", "compile_mode", "fast", "not one of"),
    ("model", "arch", "vit_hug", "did you mean 'vit_huge'"),
    ("data", "crop_size", 225, "not a multiple of model.patch_size"),
    ("mask", "pred_mask_scale", [0.3, 0.2], r"mask.pred_mask_scale is \[0.3, 0.2\]; allowed: two numbers, each > 0 "
                                            r"and <= 1, the first <= the second"),
])
def test_bad_values_rejected(section, key, value, message):
    if message is None:  # refused only beside another key: grad_accum with global_batch
        config_from_dict({section: {key: value}}, "x.yaml")
        with pytest.raises(ConfigError, match=f"{section}.{key} {value} is derived when optimization.global_batch"):
            config_from_dict({section: {key: value}, "optimization": {key: value, "global_batch": 64}}, "x.yaml")
        return
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict({section: {key: value}}, "x.yaml")
    assert "x.yaml" in str(err.value)


def test_unknown_section_and_derived_deepspeed_keys():
    with pytest.raises(ConfigError, match="unknown section 'optimisation'.*did you mean 'optimization'"):
        config_from_dict({"optimisation": {"lr": 1.0}}, "x.yaml")
    with pytest.raises(ConfigError, match="deepspeed.train_batch_size is derived from data.batch_size"):
        config_from_dict({"deepspeed": {"train_batch_size": 2048}}, "x.yaml")


def test_numbers_written_without_a_dot_are_numbers():
    cfg = config_from_dict({"optimization": {"lr": "1e-3", "warmup_epochs": 5}})  # PyYAML reads 1e-3 as a string
    assert cfg.optimization.lr == 1e-3 and isinstance(cfg.optimization.warmup_epochs, float)


def test_overrides_apply_typed_and_name_their_source():
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", "optimization.lr=5e-4", "data.batch_size=8",
                                  "mask.pred_mask_scale=[0.1, 0.2]", "deepspeed.zero_optimization={stage: 3}")
    assert code == 0, err
    got = yaml.safe_load(out)
    assert got["optimization"]["lr"] == 5e-4 and got["data"]["batch_size"] == 8
    assert got["mask"]["pred_mask_scale"] == [0.1, 0.2]
    assert got["deepspeed"]["zero_optimization"] == {"stage": 3}
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", "data.batchsize=8")
    assert code != 0 and "--set data.batchsize=8" in err and "did you mean 'batch_size'" in err
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", "data.batch_size=eight")
    assert code != 0 and "--set data.batch_size=eight" in err
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", "lr")
    assert code != 0 and "SECTION.KEY=VALUE" in err


@pytest.mark.parametrize("path", OUR_CONFIGS + sorted(OFFICIAL.glob("*.yaml")), ids=lambda p: p.name)
def test_round_trip(path, tmp_path):
    cfg = load_config(path)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(config_to_yaml(cfg))
    again = load_config(dumped)
    assert again == cfg
    assert config_to_yaml(again) == config_to_yaml(cfg)


def test_derived_values():
    cfg = load_config(ROOT / "configs" / "vith14_in1k.yaml")
    layout = fresh_layout(cfg, world_size=8)  # the paper's 2048 on 8 GPUs: 128 per micro step, 2 accumulated
    assert (layout.batch_size, layout.grad_accum, layout.global_batch) == (128, 2, 2048)
    assert fresh_layout(cfg, world_size=16) == BatchLayout(128, 1, 16)
    assert fresh_layout(cfg, world_size=1) == BatchLayout(128, 16, 1)
    paper = load_config(ROOT / "configs" / "vith14_in1k.yaml")
    ipe = BatchLayout(paper.data.batch_size, 1, world_size=16).steps_per_epoch(1_281_167, "imagenet")
    assert ipe == 625  # the spec: ImageNet-1K at global batch 2048
    s = schedule_steps(paper.optimization, ipe)
    assert (s.warmup_steps, s.t_max, s.train_steps) == (40 * 625, 300 * 625, 300 * 625)
    ds = deepspeed_config(cfg, layout)
    assert ds["train_batch_size"] == 2048 and ds["train_micro_batch_size_per_gpu"] == 128
    assert ds["gradient_accumulation_steps"] == 2 and ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["overlap_comm"] is True
    with pytest.raises(DataError, match="data.shards imagenet: 100 samples make no full global batch of 2048"):
        layout.steps_per_epoch(100, "imagenet")


def test_official_file_with_augmentation_or_unknown_key_is_rejected(tmp_path):
    text = (OFFICIAL / "in1k_vith14_ep300.yaml").read_text()
    flip = tmp_path / "flip.yaml"
    flip.write_text(text.replace("use_horizontal_flip: false", "use_horizontal_flip: true"))
    with pytest.raises(ConfigError, match="flip.yaml: data.use_horizontal_flip .* not implemented"):
        load_config(flip)
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("pred_depth:", "pred_dept:"))
    with pytest.raises(ConfigError, match="typo.yaml: meta.pred_dept .*did you mean 'pred_depth'"):
        load_config(typo)
    resume = tmp_path / "resume.yaml"  # load_checkpoint is a warm start from a file in logging.folder: the placeholder
    resume.write_text(text.replace("load_checkpoint: false", "load_checkpoint: true"))
    with pytest.raises(ConfigError, match=r"resume.yaml: meta.load_checkpoint is true and the file "
                                          r"\(jepa-latest.pth.tar\) is read from logging.folder, which is '\$replace"):
        load_config(resume)


def test_missing_file_and_bad_yaml(tmp_path):
    code, _, err = print_config(tmp_path / "nope.yaml")
    assert code != 0 and "nope.yaml: config file not found" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("raw, message", [
    ({"data": {"crop_size": 12.5}}, "x.yaml: data.crop_size: expected an integer, got 12.5 (float)"),
    ({"run": {"seed": 2**63}}, "x.yaml: run.seed is 9223372036854775808; allowed: >= 0 and <= 2**63 - 1"),
    ({"optimization": {"lr": "-1e-3"}}, "x.yaml: optimization.lr is -0.001; allowed: >= 0"),
    ({"optimization": {"lr": 10**400}}, "x.yaml: optimization.lr: expected a finite number, got <an integer of 401 "
                                        "digits>"),
    ({"optimization": {"lr": True}}, "x.yaml: optimization.lr: expected a number, got True (bool)"),
    ({"mask": {"allow_overlap": 1}}, "x.yaml: mask.allow_overlap: expected true or false, got 1 (int)"),
    ({"run": {"name": 5}}, "x.yaml: run.name: expected a string, got 5 (int)"),
    ({"run": {"name": "a/b"}}, "x.yaml: run.name is 'a/b'; allowed: a plain name (it names a folder of the run's "
                               "logs): no '/', '\\', '.' or '..'"),
    ({"data": {"crop_scale": [0.3, "x"]}}, "x.yaml: data.crop_scale[1]: expected a number, got 'x' (str)"),
    ({"data": {"crop_scale": [0.3, 1, 1]}}, "x.yaml: data.crop_scale: expected a list of 2 numbers, got [0.3, 1, 1]"),
    ({"data": {"crop_scale": [0, 1]}}, "x.yaml: data.crop_scale is [0.0, 1.0]; allowed: two numbers, each > 0 and "
                                       "<= 1, the first <= the second"),
    ({"data": {"backend": None}}, "x.yaml: data.backend: None is not one of 'auto', 'dali', 'torch'"),
    ({"model": {"embed_dim": 0}}, "x.yaml: model.embed_dim is 0; allowed: >= 1 and <= 16384, or null (the arch's "
                                  "value)"),
    ({"data": {2: 3}}, "x.yaml: section 'data' has no key 2 (valid: backend, batch_size, cache_dir, cache_gb, "
                       "crop_ratio, crop_scale, crop_size, epoch_order, fetch_timeout_s, num_workers, on_bad_sample, "
                       "prefetch, shards, shuffle_buffer)"),
    ({"data": None}, "x.yaml: section 'data' must be a mapping of keys, got None"),
    ({"deepspeed": {"zero_optimization": 3}}, "x.yaml: deepspeed.zero_optimization is 3; allowed: a mapping, e.g. "
                                              "{stage: 2}"),
    ({"data": {"shards": "htps://host/x/"}}, "x.yaml: data.shards: htps://host/x/ has the scheme 'htps', which is "
                                             "not one this reads: use a folder on this machine, http://, https:// or "
                                             "s3://"),
    ({"logging": {"probe_shards": "file:///data/val"}}, "x.yaml: logging.probe_shards: file:///data/val has the "
                                                        "scheme 'file', which is not one this reads: use a folder on "
                                                        "this machine, http://, https:// or s3://"),
])
def test_pydantic_errors_are_worded_as_one_line(raw, message):
    """pydantic checks the tree; the user reads our line, never pydantic's multi-line report."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, "x.yaml")
    assert str(err.value) == message
    assert "validation error" not in "".join(traceback.format_exception(err.value))


@pytest.mark.parametrize("raw, message", [
    ({"optimization": {"lr": -1}, "data": {"batch_size": "x"}}, "optimization.lr is -1.0"),
    ({"data": {"batch_size": "x"}, "optimization": {"lr": -1}}, "data.batch_size is 'x'; allowed: an integer"),
    ({"data": {"crop_size": -1, "batchsize": 1}}, "data.crop_size is -1"),
    ({"data": {"batchsize": 1, "crop_size": -1}}, "has no key 'batchsize'"),
    ({"data": {"crop_scale": [-1, "x"]}}, r"data.crop_scale\[1\]: expected a number"),  # a pair's types, then range
    ({"deepspeed": {"optimizer": {}}, "data": 3}, "deepspeed.optimizer is derived"),
    ({"data": 3, "optimisation": {}}, "section 'data' must be a mapping"),
])
def test_of_several_problems_the_first_in_the_file_is_named(raw, message):
    """pydantic lists its errors in the schema's order; the message names the first in the file's, as a reader would
    fix them."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, "x.yaml")


def test_sections_stay_frozen_dataclasses():
    """Modules read sections with dataclasses.asdict / fields / replace; a section cannot be changed in place."""
    import dataclasses

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    assert dataclasses.asdict(cfg.mask)["npred"] == cfg.mask.npred
    assert [f.name for f in dataclasses.fields(cfg.kernels)] == list(dataclasses.asdict(cfg.kernels))
    smaller = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=4))
    assert smaller.data.batch_size == 4 and cfg.data.batch_size != 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 1
    assert isinstance(cfg.data.crop_scale, tuple) and isinstance(cfg.optimization.warmup_epochs, float)


@pytest.mark.parametrize("text, holds", [
    ("", "holds no settings"), ("# a comment\n\n# and another\n", "holds no settings"), ("{}\n", "holds no sections"),
    ("- run\n- data\n", "holds a list at the top level"), ("hello\n", "holds a string at the top level"),
    ("3\n", "holds a number at the top level")])
def test_a_file_without_sections_is_refused(text, holds, tmp_path):
    """An empty file loaded as the all-defaults config: the ViT-H recipe with no data."""
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the file {holds}") and "configs/tiny_cpu.yaml" in message, message
    assert "\n" not in message
    if not text:  # and through the CLI: one `config error:` line, exit code 2
        code, out, log = print_config(path)
        assert code == 2 and out == "" and log.splitlines() == [f"config error: {message}"]


def test_a_missing_data_folder_fails_before_any_model_is_built(tmp_path, monkeypatch):
    """train.py on the ViT-H config with a mistyped data.shards: one error line naming the folder, and no ViT built
    (on the CPU that is 2.5 GiB and seconds)."""
    import train
    from model.vit import VisionTransformer

    def built(*args, **kwargs):
        raise AssertionError("a ViT was built before the data path was checked")

    monkeypatch.setattr(VisionTransformer, "__init__", built)
    missing, plain_file = tmp_path / "imagenet-trian", tmp_path / "file"
    plain_file.write_text("x")
    for shards in (missing, plain_file, tmp_path):  # absent, a file, a folder without a manifest
        log = io.StringIO()
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        try:
            code = train.main(["--config", str(ROOT / "configs" / "vith14_in1k.yaml"), "--set", f"data.shards={shards}",
                               "--set", "run.device=cpu", "--set", f"run.out_dir={tmp_path / 'run'}"])
        finally:
            logging.getLogger().removeHandler(handler)
        lines = log.getvalue().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: data.shards {shards}:"), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["typo", "url"])
def test_a_mistyped_probe_folder_fails_before_any_model_is_built(where, digit_shards, tmp_path, monkeypatch,
                                                                 caplog):
    """logging.probe_shards is read on rank 0 once the model is built; a typo is refused by the run plan first, and
    so is a URL (only data.shards is read from a server; the probe reads a folder on this machine), without a
    request."""
    from launches import train_args, train_main

    from model.vit import VisionTransformer
    from util.net import free_port

    def built(*args, **kwargs):
        raise AssertionError("a ViT was built before the probe folder was checked")

    monkeypatch.setattr(VisionTransformer, "__init__", built)
    probe = tmp_path / "digits-vla" if where == "typo" else f"http://127.0.0.1:{free_port()}/digits-val/"
    code, lines = train_main(train_args(digit_shards["train"], tmp_path / "run", "logging.probe_every=10",
                                        f"logging.probe_shards={probe}")[1:], caplog)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: logging.probe_shards {probe}: "), lines
    if where == "url":
        assert "a URL, where a shard folder on this machine is read" in lines[0] and "copy the folder" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_mistyped_url_scheme_is_refused_on_load_and_by_the_manifest_opener(tmp_path):
    """data.shards=htps://host/x/ was read as the local path htps:/host/x ("cannot read the manifest"): a scheme this
    does not read is refused by --print-config already, naming the --set item, and by read_manifest, the one opener
    behind every reader (eval.py's and report.py's shard options); URLs and folders, even with a ':', still load."""
    from pipeline.shards.format import ManifestError
    from pipeline.shards.manifest import read_manifest

    said = ("htps://host/x/ has the scheme 'htps', which is not one this reads: use a folder on this machine, http://, "
            "https:// or s3://")
    code, out, log = print_config(ROOT / "configs" / "tiny_cpu.yaml", "data.shards=htps://host/x/")
    assert code == 2 and out == "" and log.splitlines() == [
        f"config error: --set data.shards=htps://host/x/: data.shards: {said}"]
    for good in ("https://host/x/", "s3://bucket/x/", "http://127.0.0.1:8000/x", "shards/a:b", "C:shards"):
        assert config_from_dict({"data": {"shards": good}}).data.shards == good
    with pytest.raises(ManifestError) as err:
        read_manifest("htps://host/x/", key="--val-shards")
    assert str(err.value) == f"--val-shards: {said}"
    with pytest.raises(ManifestError, match=r"^HTTP://host/x has the scheme 'HTTP'"):
        read_manifest("HTTP://host/x")


DUPLICATES = "run:\n  name: a\ndata:\n  batch_size: 8\n  crop_size: 112\n  batch_size: 16\n"


@pytest.mark.parametrize("text, message", [
    (DUPLICATES, "line 6: key data.batch_size appears twice (first at line 4); keep one"),
    ("data:\n  crop_size: 112\nrun:\n  name: a\ndata:\n  batch_size: 8\n", "line 5: key data appears twice (first at "
                                                                         "line 1); keep one"),
    ("deepspeed:\n  zero_optimization: {stage: 1, stage: 2}\n", "line 2: key deepspeed.zero_optimization.stage "
                                                                "appears twice (first at line 2); keep one"),
    ("data:\n  crop_scale: [0.3, 1.0]\n  shards: x\n  'shards': y\n", "line 4: key data.shards appears twice"),
    ("meta:\n  pred_depth: 12\n  pred_depth: 6\n", "line 3: key meta.pred_depth appears twice"),  # official schema
    # the first in the file, although the outer mapping's duplicate is found by the walk first
    ("data:\n  crop_size: 112\n  crop_size: 224\nrun: {}\nrun: {}\n", "line 3: key data.crop_size appears twice"),
    # aliases (one value in two places; a bomb), merge keys, integers Python will not read
    ("data:\n  crop_scale: &pair [0.3, 1.0]\n  crop_ratio: *pair\n", "line 3: the YAML alias *pair is not accepted"),
    ("deepspeed:\n  base: &b {stage: 2}\n  zero_optimization:\n    <<: *b\n", "line 4: the YAML alias *b"),
    ("deepspeed:\n  zero_optimization:\n    <<: {stage: 2}\n", "line 3: the YAML merge key << is not accepted"),
    ("run:\n  seed: 1" + "0" * 5000 + "\n", "line 2: the integer 10000000000000000000… has 5001 characters, more "
                                            "than Python reads (4300 digits)"),  # was a ValueError traceback
])
def test_yaml_that_misleads_is_refused_naming_the_line(text, message, tmp_path):
    """PyYAML keeps the last of two equal keys silently (an edit above a forgotten line would be lost), expands
    aliases without limit and raises a ValueError on a 5,000-digit integer."""
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path} {message}"), str(err.value)


def test_duplicates_in_an_override_and_safe_load_kept():
    with pytest.raises(ConfigError, match=r"^--set deepspeed.zero_optimization=\{stage: 1, stage: 2\}: key "
                                          r"deepspeed.zero_optimization.stage appears twice; keep one$"):
        load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides=["deepspeed.zero_optimization={stage: 1, stage: 2}"])
    # the same types as yaml.safe_load, nothing that runs code
    text = (ROOT / "configs" / "vith14_in1k.yaml").read_text()
    from config.yaml_text import read_yaml

    assert read_yaml(text, "x.yaml") == yaml.safe_load(text)
    with pytest.raises(ConfigError, match="x.yaml: not valid YAML: could not determine a constructor"):
        read_yaml("run: !!python/object/apply:os.system ['echo unsafe']\n", "x.yaml")


def test_print_config_lays_the_recipes_global_batch_out_over_the_ranks_or_names_the_choices(monkeypatch):
    """The issue's example: the paper's 2048 on 8 GPUs (WORLD_SIZE as the launchers set it) is 128 x accum 2 x 8; on 3
    ranks one line names 2048, the nearest rank counts and the nearest global batches; --world-size wins."""
    vith = ROOT / "configs" / "vith14_in1k.yaml"
    monkeypatch.setenv("WORLD_SIZE", "8")
    code, out, err = print_config(vith)
    assert code == 0 and "# derived: global_batch_size: 2048 = 128 per GPU x grad_accum 2 x 8 GPU(s)" in out, err
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, out, err = print_config(vith)
    assert (code, out) == (2, "") and err.strip() == (
        f"config error: optimization.global_batch 2048 cannot be split over 3 ranks (2048 / 3 is not whole): train "
        f"on 2 or 4 ranks (the nearest that divide it), or set optimization.global_batch to 2046 or 2049 (the "
        f"nearest multiples of 3)")
    code, out, err = print_config(vith, "data.batch_size=auto")
    assert code == 2 and "2048 cannot be split over 3 ranks" in err
    import train

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert train.main(["--config", str(vith), "--print-config", "--world-size", "16"]) == 0
    assert "# derived: global_batch_size: 2048 = 128 per GPU x grad_accum 1 x 16 GPU(s)" in printed.getvalue()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert train.main(["--config", str(vith), "--print-config", "--world-size", "16", "--set",
                           "data.batch_size=auto"]) == 0
    assert "micro_batch: auto: the first step tries 128 per GPU and halves it" in printed.getvalue()


def test_print_config_shows_the_steps_a_user_checks(small_shards, tmp_path):
    """--print-config: the global batch, and from the shards' manifest the steps per epoch, warmup and total steps
    (192 samples at a global batch of 24: 8 steps an epoch); without readable shards, why they are not known."""
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", f"data.shards={small_shards}",
                                  "data.batch_size=24", "optimization.epochs=5", "optimization.warmup_epochs=1",
                                  "optimization.max_steps=30")
    assert code == 0, err
    derived = [line.removeprefix("# derived: ") for line in out.splitlines() if line.startswith("# derived: ")]
    assert derived[1:6] == ["global_batch_size: 24 = 24 per GPU x grad_accum 1 x 1 GPU(s) (data.batch_size x "
                            "optimization.grad_accum x ranks; the GPUs: --world-size, or WORLD_SIZE as the launchers "
                            "set it)", "data: 192 samples in 4 shard(s)", "steps_per_epoch: 8",
                            "warmup_steps: 8", "total_steps: 40 (5 epochs); this run stops at 30 "
                                               "(optimization.max_steps)"]
    code, out, err = print_config(ROOT / "configs" / "tiny_cpu.yaml", f"data.shards={tmp_path / 'none'}")
    assert code == 0 and f"# derived: steps: not known until data.shards can be read (data.shards {tmp_path / 'none'}" in out


def test_a_bare_off_in_yaml_is_the_word_off_where_a_key_takes_it():
    """YAML 1.1 reads `off` as false: logging.collapse and logging.wandb take it as their word `off`; a key without
    the word (data.backend), or `on`, is still refused naming the value."""
    cfg = config_from_dict({"logging": {"collapse": False, "wandb": False}}, "x.yaml")
    assert (cfg.logging.collapse, cfg.logging.wandb) == ("off", "off")
    with pytest.raises(ConfigError, match="logging.collapse: True is not one of"):
        config_from_dict({"logging": {"collapse": True}}, "x.yaml")
    with pytest.raises(ConfigError, match="data.backend: False is not one of"):
        config_from_dict({"data": {"backend": False}}, "x.yaml")


def test_data_shards_naming_the_folders_manifest_means_the_folder():
    for given, folder in (("http://host/x/manifest.json", "http://host/x/"), ("shards/manifest.json", "shards/"),
                          ("s3://b/p/manifest.json/", "s3://b/p/"), ("http://host/x/", "http://host/x/")):
        assert config_from_dict({"data": {"shards": given}}).data.shards == folder
