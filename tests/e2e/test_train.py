"""train.py end to end on real handwritten digits: 2 CPU processes through the real deepspeed launcher (gloo), one
process alone; from shards on an HTTP server; preemption by SIGTERM and SIGKILL, ZeRO without stages, corrupt
checkpoints, non-finite losses. ZeRO 1-3's EMA is checked on the runs of test_elastic.py."""
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch
from checkpoint_checks import assert_target_is_the_ema_of_the_fp32_weights
from launches import (complete_tags, deepspeed, launch, logged_losses, no_shm_leftovers, ok, python,  # noqa: F401
                      start, summary, torchrun, train_args, train_main)
from served import serve

from util.urls import redact

SECRET = "s3cr3t-Pa55"  # a password in data.shards, found nowhere a run writes or prints


@pytest.fixture(scope="module")
def shards(digit_shards):
    """The digits' train split: 1,348 images in 8 shards."""
    return digit_shards["train"]


@pytest.fixture(scope="module")
def reference_run(shards, digit_shards, tmp_path_factory):
    """30 uninterrupted steps with ZeRO-2 on 2 ranks through DeepSpeed's launcher, probed on the held-out digits: the
    run the other tests compare with."""
    out = tmp_path_factory.mktemp("reference")
    log = ok(launch(deepspeed(2, train_args(shards, out, "optimization.max_steps=30", "checkpoint.every_steps=10",
                                            "logging.probe_every=15", f"logging.probe_shards={digit_shards['val']}"))))
    return out, log


def test_loss_decreases_and_ranks_agree(reference_run):
    out, log = reference_run
    loss = logged_losses(out)
    assert sorted(loss) == list(range(1, 31))
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(26, 31)) / 5
    assert last < 0.8 * first, (first, last)
    assert log.count("ranks agree: target encoder digest") == 3  # steps 10, 20, 30
    assert summary(out)["steps"] == 30 and "images per GPU-hour" in log
    probes = [float(line.split("kNN top-1 ")[1].split("%")[0]) for line in log.splitlines() if "probe: kNN" in line]
    assert len(probes) == 2 and all(10.0 < p <= 100.0 for p in probes), probes  # steps 15 and 30; chance is 10%


def test_sigkill_then_resume_auto_gives_identical_losses(shards, reference_run, tmp_path):
    """2 ranks killed without warning a step or more past their checkpoint at step 10; --resume auto goes on to step
    30 with the losses of the uninterrupted reference run."""
    ref_out, _ = reference_run
    args = train_args(shards, tmp_path, "optimization.max_steps=30", "checkpoint.every_steps=10")
    proc = start(torchrun(2, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "checkpoints" / "step00000010" / "COMPLETE"
    deadline = time.time() + 600
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "no checkpoint at step 10"
    while max(logged_losses(tmp_path)) < 11 and proc.poll() is None:  # a step past the checkpoint, then kill every
        time.sleep(0.05)                                                # process of the launch without warning
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(logged_losses(tmp_path))
    assert 11 <= killed_at < 30
    assert "resumed from" in ok(launch(torchrun(2, [*args, "--resume", "auto"])))
    want, got = logged_losses(ref_out), logged_losses(tmp_path)
    assert sorted(got) == list(range(1, 31))
    assert [got[s] for s in range(1, 31)] == [want[s] for s in range(1, 31)]


def stop_with_sigterm(cmd, after_line):
    """Starts `cmd` in its own process group, sends SIGTERM to the whole group (as a cluster scheduler does on
    preemption) once `after_line` is printed; returns (launcher exit code, output)."""
    proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        if after_line in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(log) + rest


def test_two_ranks_from_an_http_server_equal_the_local_run_and_a_resume_goes_on_exactly(shards, reference_run,
                                                                                       tmp_path):
    """data.shards a URL (nginx on 127.0.0.1) with a password in it: 2 ranks share one shard cache, fetching each
    file once; steps 1-10, then a resume for 11-20 that takes every byte from the cache; every loss equals the local
    reference run's. The password is in no file of the run folder (config.yaml, run.json, the checkpoints' saved
    config, the logs) and in no line of either launch: they show the URL redacted (util/urls.py)."""
    server = serve(shards.parent, tmp_path / "nginx")  # it asks for no password: the one in the URL is not checked
    try:
        url = server.url(shards.name + "/").replace("http://", f"http://me:{SECRET}@")
        args = train_args(url, tmp_path / "run", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=1",
                          "checkpoint.every_steps=10")
        first = ok(launch(torchrun(2, [*args, "--set", "optimization.max_steps=10"])))
        files = [p for p in shards.iterdir() if p.suffix in (".tar", ".idx")]
        assert summary(tmp_path / "run")["launches"][-1]["data_network_bytes"] == sum(p.stat().st_size for p in files)
        assert sorted(len(server.requests(p.name)) for p in files) == [1] * len(files)  # once by one of 2 ranks
        out = ok(launch(torchrun(2, [*args, "--set", "optimization.max_steps=20", "--resume", "auto"])))
    finally:
        server.stop()
    assert "resumed from" in out and "shard cache: 0.0 MB from the network" in out
    assert f"shards: {redact(url)}\n" in (tmp_path / "run" / "config.yaml").read_text() and "me:***@" in redact(url)
    holding = [str(p) for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert SECRET not in first + out and not holding, holding
    second = summary(tmp_path / "run")["launches"][-1]  # the resumed launch's own cache figures
    assert (second["data_network_bytes"], second["data_cache_hit_rate"]) == (0, 1.0)
    want, got = logged_losses(reference_run[0]), logged_losses(tmp_path / "run")
    print("local:", [f"{want[s]:.6f}" for s in range(1, 21)])
    print("http: ", [f"{got[s]:.6f}" for s in range(1, 21)])
    assert sorted(got) == list(range(1, 21)) and [got[s] for s in range(1, 21)] == [want[s] for s in range(1, 21)]


def test_sigterm_checkpoints_and_exits_zero(shards, tmp_path):
    sets = ["optimization.max_steps=500", "checkpoint.every_steps=1000"]
    # one process, no launcher: train.py's own exit code
    code, log = stop_with_sigterm(python(train_args(shards, tmp_path / "one", *sets)), "step 3/500")
    assert code == 0, log[-3000:]
    tags = complete_tags(tmp_path / "one")
    assert len(tags) == 1 and 3 <= int(tags[0][4:]) < 500, tags
    assert "stopped by SIGTERM" in log
    # two ranks through the deepspeed launcher: both stop at the same step and the checkpoint is complete
    code, log = stop_with_sigterm(deepspeed(2, train_args(shards, tmp_path / "two", *sets)), "step 3/500")
    tags = complete_tags(tmp_path / "two")
    assert len(tags) == 1 and 3 <= int(tags[0][4:]) < 500, (tags, log[-3000:])
    assert "stopped by SIGTERM" in log and "ranks agree" in log


def test_without_zero_the_target_is_the_ema_of_the_optimizers_fp32_weights(shards, tmp_path):
    """ZeRO stage 0: DeepSpeed's bf16 optimizer keeps the fp32 groups whole on every rank, so one process shows it
    (stages 1-3, where each rank holds a slice: test_elastic.py)."""
    log = ok(launch(python(train_args(shards, tmp_path, "optimization.max_steps=3", "checkpoint.every_steps=1",
                                      "checkpoint.keep_last=2", "deepspeed.zero_optimization={stage: 0}"))))
    assert complete_tags(tmp_path) == ["step00000002", "step00000003"]
    assert_target_is_the_ema_of_the_fp32_weights(tmp_path / "checkpoints", "step00000002", "step00000003", step=3,
                                                  stage=0, steps_per_epoch=1348 // 16, log=log)


def test_corrupt_or_missing_checkpoint_is_named(shards, reference_run, tmp_path, caplog):
    ref_out, _ = reference_run
    shutil.copytree(ref_out / "checkpoints", tmp_path / "checkpoints")
    tag = tmp_path / "checkpoints" / "step00000030"
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"garbage")
    # both refused by the run plan (the digests its save recorded; unit/test_checkpoint_integrity.py): main in this
    # process
    code, lines = train_main(train_args(shards, tmp_path, "optimization.max_steps=60")[1:] + ["--resume", str(tag)],
                             caplog)
    assert code == 1 and len(lines) == 1, lines
    assert f"{tag / 'mp_rank_00_model_states.pt'}: 7 bytes, its save wrote " in lines[0]
    missing = tmp_path / "checkpoints" / "step00000099"
    code, lines = train_main(train_args(shards, tmp_path, "optimization.max_steps=60")[1:] + ["--resume", str(missing)],
                             caplog)
    assert code == 1 and len(lines) == 1 and f"checkpoint {missing} does not exist" in lines[0]


def test_eval_reads_our_checkpoint(shards, reference_run, tmp_path, capsys):
    """eval.py's main in this process (its CLI in a fresh interpreter: test_eval_cli.py, make demo)."""
    ref_out, _ = reference_run
    tag = ref_out / "checkpoints" / "step00000030"
    for which in ("target", "context"):
        out = tmp_path / f"{which}.json"
        code = importlib.import_module("eval").main(["--checkpoint", str(tag), "--train-shards", str(shards),
                                                     "--val-shards", str(shards), "--limit", "120", "--epochs", "3",
                                                     "--attentive-epochs", "1", "--encoder", which, "--json",
                                                     str(out)])
        assert code == 0, capsys.readouterr().err[-2000:]
        assert json.loads(out.read_text())["setup"]["encoder"] == which


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    proc = launch(python(train_args(shards, tmp_path, "optimization.max_steps=20", "checkpoint.every_steps=1",
                                    "optimization.start_lr=1e30", "optimization.lr=1e30")))
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
