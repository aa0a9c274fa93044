"""What a new user meets at the commands' edges: --help shows the defaults; export names the model it wrote as what it
is; a normal start on a machine without a GPU prints no library notes about the GPU it did not find."""
from __future__ import annotations

import contextlib
import io
import os

import pytest
import torch

import eval as eval_cli
import export
import shard_dataset
import train
from model.export import TIMM_FALLBACK_ARCH
from training.distributed import quiet_cpu_start, without_op_notes


def help_text(module) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.parse_args(["--help"])
    return " ".join(out.getvalue().split())  # argparse wraps lines at the terminal's width


def test_help_shows_each_default():
    text = help_text(eval_cli)
    assert "linear and low-shot probe epochs (default: 100)" in text
    assert "attentive-probe epochs (default: 20)" in text and "which encoder to probe (default: target)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("module, option", [(train, "--world-size"), (shard_dataset, "--workers"),
                                            (eval_cli, "--epochs")])
@pytest.mark.parametrize("value, said", [("0", "must be at least 1, got 0"), ("-3", "must be at least 1, got -3"),
                                         ("two", "'two' is not an integer")])
def test_a_count_below_one_or_not_a_number_is_argparse_s_one_line(module, option, value, said, capsys):
    required = {train: ["--config", "x.yaml"], shard_dataset: ["src", "dest"],
                eval_cli: ["--checkpoint", "c", "--train-shards", "t", "--val-shards", "v"]}[module]
    with pytest.raises(SystemExit) as exit_:
        module.parse_args([*required, option, value])
    assert exit_.value.code == 2 and f"argument {option}: {said}" in capsys.readouterr().err


def test_export_names_the_model_it_wrote_by_its_sizes_unless_timm_has_a_name_for_it():
    arch = {"embed_dim": 96, "depth": 4, "num_heads": 3, "patch_size": 4, "img_size": 32}
    assert export.model_name({"architecture": TIMM_FALLBACK_ARCH}, arch) == ("ViT 96 wide, 4 deep, 3 heads, patch 4 "
                                                                              "at 32 px")
    assert export.model_name({"architecture": "vit_huge_patch14_gap_224"}, arch) == "vit_huge_patch14_gap_224"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine DeepSpeed finds the GPU and says nothing")
def test_a_start_without_a_gpu_tells_deepspeed_the_accelerator(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    quiet_cpu_start()
    assert os.environ["DS_ACCELERATOR"] == "cpu"  # DeepSpeed's "Setting accelerator to CPU" warning is for a guess
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    quiet_cpu_start()
    assert os.environ["DS_ACCELERATOR"] == "xpu"  # the user's choice stays


def test_deepspeed_op_notes_are_held_back_and_other_output_passes(capsys):
    with without_op_notes():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("something else DeepSpeed says")
    assert capsys.readouterr().out == "something else DeepSpeed says\n"
