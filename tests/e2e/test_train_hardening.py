"""train.py on a bad day: a planted pickle, a checkpoint damaged in place, a config value out of range, a changed
resume, two runs on one out_dir, a full disk, a damaged DALI index, skipped samples.

Every case expects one clear error line (no traceback), nothing run from a file, no good checkpoint lost. The
refusals that come before any process group run train.py's main in this process; the rest run the real CLI as a
subprocess, one process each unless the case needs two ranks (the 2-process paths are in test_train.py). Most copy
the session's trained checkpoint (e2e/conftest.py `trained_run`).
"""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bad_overrides import ISSUE_EXAMPLES
from checkpoint_files import Planted, damage
from index_damage import HAVE_DALI, assert_one_line_naming_the_shard, damaged
from launches import (complete_tags, error_lines, launch, no_shm_leftovers, python, start, summary,  # noqa: F401
                      torchrun, train_args, train_main)

from pipeline.shards.format import parse_index
from pipeline.shards.manifest import list_shards

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
SETS = ("checkpoint.every_steps=2", "checkpoint.keep_last=1")  # the trained run's


def command(shards, out_dir, *sets):
    return python(train_args(shards, out_dir, *SETS, *sets))


@pytest.fixture(scope="module")
def shards(digit_shards):
    return digit_shards["train"]


@pytest.fixture
def trained(trained_run):
    return trained_run


def copy_run(trained, dest) -> Path:
    shutil.copytree(trained, dest)
    (dest / "summary.json").unlink()
    return dest


def replant(folder) -> None:
    """Re-marks `folder` complete with the digests of its files as they are now: whoever can plant a file in a
    checkpoint can rewrite its marker too (the digests find damage, not attacks), so these cases reach the load,
    where weights_only is what keeps the planted code from running."""
    from training.integrity import mark_complete

    mark_complete(folder, int(folder.name[4:]))


# ------------------------------------------------------------------------------------------------ 1. untrusted files

def test_own_checkpoint_files_load_with_weights_only(trained):
    """Every file train.py writes loads with weights_only=True: the model states without any allow-listed class."""
    from training.states import load_states_file

    folder = trained / "checkpoints" / "step00000002"
    client = load_states_file(folder / "mp_rank_00_model_states.pt")
    assert client["step"] == 2 and isinstance(client["rng"][0]["numpy"][1], torch.Tensor)
    with pytest.raises(Exception, match="Unsupported global"):  # the optimizer states need DeepSpeed's own classes
        torch.load(next(folder.glob("*optim_states.pt")), weights_only=True)


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_resume_does_not_run_code_planted_in_a_checkpoint(trained, shards, tmp_path, victim):
    out = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "PWNED"
    planted = out / "checkpoints" / "step00000002" / victim
    torch.save({"step": 2, "payload": Planted(marker)}, planted)
    replant(planted.parent)
    proc = launch(command(shards, out, "optimization.max_steps=4") + ["--resume", "auto"])
    assert proc.returncode == 1
    assert not marker.exists(), "code planted in the checkpoint ran"
    (line,) = error_lines(proc)
    assert str(planted) in line and "could run code" in line and "getattr" in line


def test_a_resume_on_another_world_size_does_not_run_code_planted_in_a_checkpoint(trained, shards, tmp_path):
    """The universal conversion (DeepSpeed's converter, in its own process) loads weights-only as well."""
    out = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "PWNED"
    planted = out / "checkpoints" / "step00000002" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": Planted(marker)}}, planted)
    replant(planted.parent)
    proc = launch(torchrun(2, command(shards, out, "optimization.max_steps=4")[1:] + ["--resume", "auto"]))
    assert proc.returncode != 0
    assert not marker.exists(), "code planted in the checkpoint ran"
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "universal conversion failed" in line and "could run code" in line and str(planted.parent) in line
    assert not (out / "checkpoints" / "universal" / "step00000002").exists()  # nothing half-converted is kept


# --------------------------------------------------------------------------------- 1b. a checkpoint damaged in place

def test_train_refuses_a_checkpoint_damaged_in_place_before_the_process_group(trained_run, digit_shards, tmp_path,
                                                                               caplog):
    """train.py's main (in this process: the refusal comes in the run plan) on a copy of the session's checkpoint
    with 256 bytes overwritten inside its model states, size unchanged: --resume PATH is refused naming the file,
    and --resume auto, with no other checkpoint, refuses rather than starting fresh."""
    out = shutil.copytree(trained_run, tmp_path / "run")
    tag = out / "checkpoints" / "step00000002"
    victim = tag / "mp_rank_00_model_states.pt"
    damaged = damage(victim)
    argv = train_args(digit_shards["train"], out, "checkpoint.every_steps=2", "checkpoint.keep_last=1",
                      "optimization.max_steps=4")[1:]
    code, lines = train_main([*argv, "--resume", str(tag)], caplog)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: checkpoint {tag} is damaged: {victim}: its sha256 differs"), lines[0]
    code, lines = train_main([*argv, "--resume", "auto"], caplog)
    assert code == 1 and len(lines) == 1, lines
    assert f"no checkpoint in {tag.parent} verifies: step00000002 ({victim}: its sha256" in lines[0], lines[0]
    assert victim.read_bytes() == damaged and sorted(p.name for p in tag.parent.glob("step*")) == [tag.name]


# ------------------------------------------------------------------------------------- 2. config values out of range

def test_the_issue_examples_through_the_real_cli():
    """--print-config refuses them: exit code 2, one `config error:` line naming the key, no traceback. Four of the
    ten (each run imports torch: seconds): the two that exited 0 and the two that gave a traceback."""
    examples = [ISSUE_EXAMPLES[i] for i in (3, 4, 8, 9)]
    procs = [(item, key, subprocess.Popen(
        [sys.executable, "train.py", "--config", str(TINY), "--set", item, "--print-config"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for item, key in examples]
    for item, key, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (item, proc.returncode, err)
        lines = err.strip().splitlines()
        assert out == "" and "Traceback" not in err, (item, err)
        assert len(lines) == 1 and lines[0].startswith("config error:") and key in lines[0], (item, err)


# -------------------------------------------------------------------------------------------- 3. a changed resume

def test_resume_with_other_batch_is_refused_naming_the_changes(trained, shards, tmp_path, caplog):
    """Refused by the run plan, before any process group: train.py's main in this process."""
    out = copy_run(trained, tmp_path / "run")
    code, lines = train_main(command(shards, out, "optimization.max_steps=4", "data.batch_size=8")[2:]
                             + ["--resume", "auto"], caplog)
    assert code == 1
    (line,) = lines
    assert line.startswith("error: checkpoint ") and "data.batch_size: 16 → 8" in line
    assert "schedule: total steps: 1680 → 3360" in line and "--accept-changes" in line
    untouched = sorted(p.name for p in trained.iterdir() if p.name != "summary.json")
    assert sorted(p.name for p in out.iterdir()) == untouched
    assert not (out / "checkpoints" / "step00000004").exists()


# ------------------------------------------------------------------------------ 3b. one base class, one line each

def test_a_config_error_a_data_error_and_a_refused_resume_each_print_one_line(trained, shards, tmp_path, caplog):
    """Each is a util.errors.UserError, caught once by train.py's main: one line, its exit code, no traceback."""
    from config import ConfigError, load_config
    from model.safe_load import CheckpointError
    from pipeline import DataError
    #FMT
    from training.plan import ResumeRequest, plan_run
    from util.errors import UserError

    out = copy_run(trained, tmp_path / "run")
    cases = {  # what main is given → (the class load_config or plan_run raises, exit code, the line's start)
        "config": (command(shards, out, "optimization.lr=-0.001"), ConfigError, 2,
                   "config error: --set optimization.lr=-0.001: optimization.lr is -0.001; allowed: >= 0"),
        "data": (command(tmp_path / "nowhere", tmp_path / "fresh"), DataError, 1,
                 f"error: data.shards {tmp_path / 'nowhere'}: "),
        "resume": (command(shards, out, "run.seed=7") + ["--resume", "auto"], CheckpointError, 1,
                   "error: checkpoint "),
    }
    for name, (argv, kind, exit_code, first_words) in cases.items():
        assert issubclass(kind, UserError) and kind.exit_code == exit_code
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        with pytest.raises(kind):
            plan_run(load_config("configs/tiny_cpu.yaml", overrides=sets),
                     1, ResumeRequest("auto" if "--resume" in argv else ""))
        code, lines = train_main(argv[2:], caplog)
        assert code == exit_code and len(lines) == 1 and lines[0].startswith(first_words), (name, code, lines)
    assert "run.seed: 0 → 7" in lines[0]
    assert not (tmp_path / "fresh").exists()  # refused before anything was written


# ----------------------------------------------------------------------------------- 4. two runs on one out_dir

def test_second_run_on_a_busy_out_dir_fails_at_once_and_a_killed_run_leaves_no_lock(shards, tmp_path, caplog):
    """A second run is refused by the run plan, before any process group (train.py's main in this process); once
    the first is killed, a resume goes on, removing the save the first left half-written."""
    out = tmp_path / "run"
    first = start(command(shards, out, "optimization.max_steps=400"), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    try:
        lock = out / ".run.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None and lock.read_text().startswith(f"pid {first.pid} ")
        (out / "checkpoints" / "step00000099").mkdir(parents=True, exist_ok=True)  # as a save that crashed
        code, (line, *more) = train_main(command(shards, out, "optimization.max_steps=2")[2:], caplog)
        assert code == 1 and not more
        assert f"run.out_dir {out} is in use by another run (pid {first.pid} on" in line
        assert (out / "checkpoints" / "step00000099").is_dir()  # the second run touched nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = launch(command(shards, out, "optimization.max_steps=2") + ["--resume", "auto"])  # a fresh run is refused
    assert third.returncode == 0, third.stderr[-3000:]
    assert "step00000099: a save that did not complete" in third.stderr
    assert not (out / "checkpoints" / "step00000099").exists()


# ----------------------------------------------------------------------------------------------- 5. a full disk

def test_failed_write_leaves_no_folder_and_keeps_the_last_checkpoint_and_accept_changes_goes_on(trained, shards,
                                                                                                 tmp_path):
    """Files may not grow past 3 MB (RLIMIT_FSIZE): the optimizer states (6 MB) fail mid-write, as on a disk that
    fills while saving (the free-space check before the save passed). The resume that follows also changes the
    epochs, with --accept-changes: it goes on and logs each change."""
    out = copy_run(trained, tmp_path / "run")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))  # noqa: E731
    proc = launch(command(shards, out, "optimization.max_steps=4") + ["--resume", "auto"], preexec_fn=limit)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert f"cannot write checkpoint {out / 'checkpoints' / 'step00000004'} (RuntimeError" in line
    assert f"the last complete checkpoint {out / 'checkpoints' / 'step00000002'} is intact" in line
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002"]
    resumed = launch(command(shards, out, "optimization.max_steps=3", "optimization.epochs=10")
                     + ["--resume", "auto", "--accept-changes"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-3000:]
    changes = [line for line in resumed.stderr.splitlines() if "resuming with a change" in line]
    assert len(changes) == 2, changes  # the epochs, and the schedule's length that follows from them
    assert "optimization.epochs: 20 → 10" in changes[0] and "schedule: total steps: 1680 → 840" in changes[1]
    assert complete_tags(out) == ["step00000003"]


SMALL_FS = """set -e
mount -t tmpfs -o size=14m tmpfs "$OUT"
"$@" > "$OUT.first" 2>&1 || echo "first exit $?" >> "$OUT.first"
"$@" --resume auto > "$OUT.again" 2>&1 || echo "again exit $?" >> "$OUT.again"
ls "$OUT/checkpoints" > "$OUT.listing"
mount -o remount,size=64m "$OUT"
"$@" --resume auto > "$OUT.freed" 2>&1 || echo "freed exit $?" >> "$OUT.freed"
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare to mount a small file system")
def test_full_disk_is_named_with_sizes_before_writing(shards, tmp_path):
    """On a 14 MB file system the first checkpoint (~9 MB) fits, the second cannot: the save says so before writing,
    the resume on the still-full disk says so at start (not in the TensorBoard writer), and once there is space the
    run resumes."""
    out = tmp_path / "small"
    out.mkdir()
    cmd = command(shards, out, "optimization.max_steps=4", "logging.tensorboard=false")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"unshare -rm is not permitted here: {probe.stderr.decode().strip()}")
    proc = launch(["unshare", "-rm", "sh", "-c", SMALL_FS, "sh", *cmd], env={"OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    first, again, freed = (Path(f"{out}.{name}").read_text() for name in ("first", "again", "freed"))
    for text in (first, again):
        assert "Traceback" not in text and "exit 1" in text, text[-3000:]
    assert "error: no space on the file system" in first and "checkpoint step00000004: need" in first
    assert "error: no space on the file system" in again and "for one checkpoint" in again
    assert Path(f"{out}.listing").read_text().split() == ["step00000002", "zero_to_fp32.py", "zero_to_torch.py"]
    assert "resumed from" in freed and "exit" not in freed, freed[-3000:]


# ------------------------------------------------------------------------------------------- 6. a damaged DALI index

def test_train_cli_prints_one_error_line(dataset, tmp_path):
    """What a user sees, through each backend: `error: ...` naming the shard, no traceback (today's main: a
    MemoryError traceback). The index is read once the process group is up, so these stay real launches; both start
    at once (each is mostly start-up). Without DALI the torch backend alone."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    procs = {}
    for backend in ["torch"] + (["dali"] if HAVE_DALI else []):
        dest = damaged(dataset, tmp_path / backend / "shards", "size 1e13")
        procs[backend] = subprocess.Popen([sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--set",
                                           f"data.shards={dest}", "--set", f"data.backend={backend}", "--set",
                                           f"run.out_dir={tmp_path / backend / 'run'}", "--set", "data.batch_size=4"],
                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for backend, proc in procs.items():
        stderr = proc.communicate(timeout=300)[1]
        assert proc.returncode != 0, (backend, stderr)
        assert "Traceback" not in stderr, (backend, stderr)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (backend, stderr)
        assert_one_line_naming_the_shard(errors[0])


# ------------------------------------------------------------------------------------------ 9. skipped samples

def test_skipped_samples_are_logged_written_and_monitored(small_shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(small_shards, bad)
    shard = list_shards(bad)[0]
    members = parse_index(shard.index_path.read_text())
    with open(shard.path, "r+b") as f:
        for sample in members[:3]:  # three samples of the first shard no longer start like a JPEG
            offset = next(o for ext, o, _, _ in sample if ext == "jpg")
            f.seek(offset)
            f.write(b"NOT A JPEG " * 4)
    out = tmp_path / "run"
    steps = 192 // 16  # one epoch of the small set: every sample is read once
    proc = launch(command(bad, out, f"optimization.max_steps={steps}", "data.on_bad_sample=skip",
                          f"logging.every_steps={steps}", f"checkpoint.every_steps={steps}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 3 bad samples so far" in proc.stderr and "3 bad samples skipped" in proc.stderr
    assert summary(out)["skipped_samples"] == 3
    rows = (out / "logs" / "tiny_cpu" / "Data_skipped_samples.csv").read_text().splitlines()
    assert rows[-1].split(",")[1].startswith("3")
