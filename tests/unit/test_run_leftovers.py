"""What an earlier run left behind, handled in process: a fresh run into another run's checkpoints is refused before
any process group (train.py's main), and only the DeepSpeed /dev/shm buffers that no process holds (whatever their age) are removed
(training/distributed.py). (A rank killed or hung, a launcher that vanished, the out_dir deleted mid-run, under the
real launchers: e2e/test_faults.py.)"""
import mmap
import os
import time

from launches import train_args, train_main

from training.distributed import remove_dead_shm_buffers


def test_a_fresh_run_into_checkpoints_is_refused(digit_shards, tmp_path, caplog):
    tag = tmp_path / "run" / "checkpoints" / "step00000002"  # what the refusal reads of a run: a complete tag
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (tag / "COMPLETE").write_text("2\n")
    before = {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").rglob("*") if p.is_file()}
    code, lines = train_main(train_args(digit_shards["train"], tmp_path / "run")[1:], caplog)  # no --resume
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: run.out_dir {tmp_path / 'run'} holds the checkpoints of a run (1, the newest")
    assert "resume it with --resume auto, or give this run another run.out_dir" in lines[0]
    assert {p: p.read_bytes() for p in before} == before


def test_every_shm_buffer_no_process_holds_is_removed_however_new(tmp_path):
    """A job killed with SIGKILL and started again at once: its ranks' buffers are seconds old, and the kernel closed
    and unmapped them when the ranks died (a buffer written and closed here is in that state). Removed; a buffer a
    live run maps, or holds open (DeepSpeed opens it as it creates it, before mapping it), is kept, as is what is not
    DeepSpeed's."""
    shm = tmp_path / "shm"
    shm.mkdir()
    dead, old_dead, mapped, created, gone = (shm / f"deepspeed_allreduce_buffer_0_127.0.0.1_1_{i}" for i in range(5))
    for path in (dead, old_dead, mapped, created):
        path.write_bytes(b"\0" * 4096)  # written and closed: brand new, owned by no process
    os.utime(old_dead, (time.time() - 3600,) * 2)
    other_name = shm / "not_deepspeed_buffer"
    other_name.write_bytes(b"\0" * 4096)
    with open(mapped, "r+b") as f:
        view = mmap.mmap(f.fileno(), 4096)  # mapped, and its descriptor closed below: held by the mapping alone
    try:
        with open(created, "r+b"):  # open, not mapped yet: a rank creating its buffer now
            removed = remove_dead_shm_buffers(shm)
        assert view[:1] == b"\0"
    finally:
        view.close()
    assert sorted(removed) == sorted([dead, old_dead])
    assert not dead.exists() and not old_dead.exists() and not gone.exists()
    assert mapped.exists() and created.exists() and other_name.exists()
