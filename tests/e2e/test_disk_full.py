"""The disk holding run.out_dir filling during training, for real: a small tmpfs as run.out_dir, filled up by another
writer once the first checkpoint is complete. Whichever write of the run hits the full disk first (the TensorBoard
events, the CSV step log, the next checkpoint's check for room), the run ends with one line naming the folder and its
last complete checkpoint, which stays intact and is what --resume auto takes once there is room again. (The check for
room before a save, on a file system too small from the start: e2e/test_train_hardening.py.)"""
import os
import subprocess

import pytest
from launches import Running, python, train_args

from training.checkpoints import find_checkpoint

SIZE = "16m"  # the tiny run's folder is 9.6 MB with its first checkpoint (9.4 MB): a second one cannot fit


def fill(path) -> None:
    """Writes `path` until its file system is full, as another job sharing the disk would."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as err:
            assert err.errno == 28, err  # ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted at a folder of `tmp_path`, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"mount -t tmpfs refused here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def test_a_disk_filling_after_a_checkpoint_is_one_line_and_the_checkpoint_stays(digit_shards, small_disk):
    out = small_disk / "run"
    # step 5 logs the collapse diagnostics for the first time: new CSV files, which cannot fit on the full disk
    run = Running(python(train_args(digit_shards["train"], out, "optimization.max_steps=8", "checkpoint.every_steps=4",
                                    "checkpoint.keep_last=1", "logging.diagnostics_every=5")))
    try:
        run.wait_for("saved checkpoint")
        fill(small_disk / "filler")
        code = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.kill()
    text = run.output()
    kept = out / "checkpoints" / "step00000004"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in text and len(errors) == 1, text[-3000:]
    assert errors[0].startswith(f"error: the disk holding run.out_dir {out} is full (no space left"), errors[0]
    assert errors[0].endswith(f"; the last complete checkpoint {kept} is intact: free some space and run the same "
                              f"command with --resume auto"), errors[0]
    # nothing complete but it; what a cut save left has no COMPLETE marker (the next start removes it)
    assert sorted(p.name for p in (out / "checkpoints").glob("step*") if (p / "COMPLETE").exists()) == [kept.name]
    (small_disk / "filler").unlink()
    found = find_checkpoint("auto", out)  # what --resume auto runs: the newest complete one whose files verify
    assert found is not None and found.folder == kept and found.record.step == 4
