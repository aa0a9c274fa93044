"""What an earlier run left behind, handled in process: a fresh run into another run's checkpoints is refused before
any process group (train.py's main), and only the DeepSpeed /dev/shm buffers of dead runs are removed
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


def test_only_unmapped_old_shm_buffers_are_removed(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    old = time.time() - 3600
    dead, live, young, other = (shm / f"deepspeed_allreduce_buffer_127.0.0.1_1_{i}" for i in range(4))
    for path in (dead, live, young):
        path.write_bytes(b"\0" * 4096)
    other_name = shm / "not_deepspeed_buffer"
    other_name.write_bytes(b"\0" * 4096)
    for path in (dead, live, other_name):
        os.utime(path, (old, old))
    with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mapped:  # a live run maps its buffer
        removed = remove_dead_shm_buffers(shm)
        assert mapped[:1] == b"\0"
    assert removed == [dead]
    assert not dead.exists() and live.exists() and young.exists() and other_name.exists() and not other.exists()
