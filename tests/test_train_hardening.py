"""train.py on a bad day: a planted pickle, a changed resume, two runs on one out_dir, a full disk, skipped samples.

Every case runs the real CLI as a subprocess and expects one clear error line (no traceback), nothing run from a
file, no good checkpoint lost. One process each (the 2-process paths are in test_train.py).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import shards as fmt

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def command(shards, out_dir, *sets):
    base = [sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--set", f"data.shards={shards}",
            "--set", f"run.out_dir={out_dir}", "--set", "data.batch_size=16", "--set", "data.num_workers=0",
            "--set", "logging.every_steps=1", "--set", "logging.diagnostics_every=0", "--set", "data.backend=torch",
            "--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep_last=1"]
    for s in sets:
        base += ["--set", s]
    return base


def run(cmd, timeout=600, extra_env=None, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def shards(digit_shards):
    return digit_shards["train"]


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """A run of 2 steps with its checkpoint step00000002."""
    out = tmp_path_factory.mktemp("trained")
    proc = run(command(shards, out, "optimization.max_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_run(trained, dest) -> Path:
    shutil.copytree(trained, dest)
    (dest / "summary.json").unlink()
    return dest


class Planted:
    """Unpickling this calls Path.touch(marker): what a hostile checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# ------------------------------------------------------------------------------------------------ 1. untrusted files

def test_own_checkpoint_files_load_with_weights_only(trained):
    """Every file train.py writes loads with weights_only=True: the model states without any allow-listed class."""
    from training.checkpoints import load_states_file

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
    proc = run(command(shards, out, "optimization.max_steps=4") + ["--resume", "auto"])
    assert proc.returncode == 1
    assert not marker.exists(), "code planted in the checkpoint ran"
    (line,) = error_lines(proc)
    assert str(planted) in line and "could run code" in line and "getattr" in line


def test_a_resume_on_another_world_size_does_not_run_code_planted_in_a_checkpoint(trained, shards, tmp_path):
    """The universal conversion (DeepSpeed's converter, in its own process) loads weights-only as well."""
    from launches import master_port

    out = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "PWNED"
    planted = out / "checkpoints" / "step00000002" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": Planted(marker)}}, planted)
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(master_port())]
    proc = run(launcher + command(shards, out, "optimization.max_steps=4")[1:] + ["--resume", "auto"])
    assert proc.returncode != 0
    assert not marker.exists(), "code planted in the checkpoint ran"
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "universal conversion failed" in line and "could run code" in line and str(planted.parent) in line
    assert not (out / "checkpoints" / "universal" / "step00000002").exists()  # nothing half-converted is kept


# -------------------------------------------------------------------------------------------- 3. a changed resume

def test_resume_with_other_batch_is_refused_naming_the_changes(trained, shards, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    proc = run(command(shards, out, "optimization.max_steps=4", "data.batch_size=8") + ["--resume", "auto"])
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "data.batch_size: 16 → 8" in line and "schedule: total steps: 1680 → 3360" in line
    assert "--accept-changes" in line
    assert not (out / "checkpoints" / "step00000004").exists()


def test_accept_changes_resumes_and_logs_each_change(trained, shards, tmp_path):
    out = copy_run(trained, tmp_path / "run")
    proc = run(command(shards, out, "optimization.max_steps=3", "optimization.epochs=10")
               + ["--resume", "auto", "--accept-changes"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    changes = [line for line in proc.stderr.splitlines() if "resuming with a change" in line]
    assert len(changes) == 2, changes  # the epochs, and the schedule's length that follows from them
    assert "optimization.epochs: 20 → 10" in changes[0] and "schedule: total steps: 1680 → 840" in changes[1]
    assert "resumed from" in proc.stderr


# ----------------------------------------------------------------------------------- 4. two runs on one out_dir

def test_second_run_on_a_busy_out_dir_fails_at_once_and_a_killed_run_leaves_no_lock(shards, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(command(shards, out, "optimization.max_steps=400"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lock = out / ".run.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None and lock.read_text().startswith(f"pid {first.pid} ")
        (out / "checkpoints" / "step00000099").mkdir(parents=True, exist_ok=True)  # as a save that crashed
        second = run(command(shards, out, "optimization.max_steps=2"))
        assert second.returncode == 1
        (line,) = error_lines(second)
        assert f"run.out_dir {out} is in use by another run (pid {first.pid} on" in line
        assert (out / "checkpoints" / "step00000099").is_dir()  # the second run touched nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = run(command(shards, out, "optimization.max_steps=2"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "step00000099: a save that did not complete" in third.stderr
    assert not (out / "checkpoints" / "step00000099").exists()


# ----------------------------------------------------------------------------------------------- 5. a full disk

def test_failed_write_leaves_no_folder_and_keeps_the_last_checkpoint(trained, shards, tmp_path):
    """Files may not grow past 3 MB (RLIMIT_FSIZE): the optimizer states (6 MB) fail mid-write, as on a disk that
    fills while saving (the free-space check before the save passed)."""
    import resource

    out = copy_run(trained, tmp_path / "run")
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))  # noqa: E731
    proc = run(command(shards, out, "optimization.max_steps=4") + ["--resume", "auto"], preexec_fn=limit)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert f"cannot write checkpoint {out / 'checkpoints' / 'step00000004'} (RuntimeError" in line
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step00000002'}" in line
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002"]
    resumed = run(command(shards, out, "optimization.max_steps=4") + ["--resume", "auto"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-3000:]


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
    proc = run(["unshare", "-rm", "sh", "-c", SMALL_FS, "sh", *cmd], extra_env={"OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    first, again, freed = (Path(f"{out}.{name}").read_text() for name in ("first", "again", "freed"))
    for text in (first, again):
        assert "Traceback" not in text and "exit 1" in text, text[-3000:]
    assert "error: no space on the file system" in first and "checkpoint step00000004: need" in first
    assert "error: no space on the file system" in again and "for one checkpoint" in again
    assert Path(f"{out}.listing").read_text().split() == ["step00000002", "zero_to_fp32.py", "zero_to_torch.py"]
    assert "resumed from" in freed and "exit" not in freed, freed[-3000:]


# ------------------------------------------------------------------------------------------ 9. skipped samples

def test_skipped_samples_are_logged_written_and_monitored(shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    shard = fmt.list_shards(bad)[0]
    members = fmt.parse_index(shard.index_path.read_text())
    with open(shard.path, "r+b") as f:
        for sample in members[:3]:  # three samples of the first shard no longer start like a JPEG
            offset = next(o for ext, o, _, _ in sample if ext == "jpg")
            f.seek(offset)
            f.write(b"NOT A JPEG " * 4)
    out = tmp_path / "run"
    steps = 1348 // 16  # one epoch: every sample is read once
    proc = run(command(bad, out, f"optimization.max_steps={steps}", "data.on_bad_sample=skip",
                       f"logging.every_steps={steps}", f"checkpoint.every_steps={steps}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 3 bad samples so far" in proc.stderr and "3 bad samples skipped" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["skipped_samples"] == 3
    rows = (out / "logs" / "tiny_cpu" / "Data_skipped_samples.csv").read_text().splitlines()
    assert rows[-1].split(",")[1].startswith("3")
