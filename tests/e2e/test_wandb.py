"""Weights & Biases from train.py, never reaching the network: two launches of one run (the second resumed) log
offline into one W&B run, the id in the checkpoints, with the CSV log's losses at their steps and the mask picture;
online without an API key, or with a server that does not answer, stops at the start with one line."""
import json
import struct
import time
from pathlib import Path

import pytest
from launches import error_lines, launch, logged_losses, ok, python, run_record, train_args

from util.net import free_port


@pytest.fixture
def wandb_env(tmp_path):
    """W&B's own folders and credentials away from the user's (no ~/.netrc, no settings file, no API key), its git
    probe off."""
    home = tmp_path / "home"
    return {"HOME": str(home), "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"), "WANDB_API_KEY": "", "WANDB_DISABLE_GIT": "true"}


def wandb_records(path: Path) -> list:
    """The records of an offline run's transaction log (run-<id>.wandb) as wandb's own protobuf Records. wandb ships
    no Python reader of it since its Go core took over, so this reads the framing: W&B's 7-byte header, then LevelDB's
    log format (32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type full/first/middle/last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        assert kind in (1, 2, 3, 4), f"{path}: chunk type {kind} at byte {pos}"
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            records.append(Record.FromString(chunk))
            chunk = b""
    return records


def history(records) -> list[dict]:
    """The logged rows: {key: value as JSON text}, a picture's fields under its key ("Masks/first_images/path")."""
    return [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_two_launches_of_a_run_log_offline_into_one_wandb_run(digit_shards, wandb_env, tmp_path):
    shards, out = digit_shards["train"], tmp_path / "run"
    args = train_args(shards, out, "logging.wandb=offline", "checkpoint.every_steps=2", "logging.mask_images_every=2")
    first = ok(launch(python([*args, "--set", "optimization.max_steps=2"]), env=wandb_env))
    second = ok(launch(python([*args, "--set", "optimization.max_steps=4", "--resume", "auto"]), env=wandb_env))
    run_id = run_record(out / "checkpoints" / "step00000004")["run_id"]
    assert run_id == run_record(out / "checkpoints" / "step00000002")["run_id"] and len(run_id) == 12

    folders = sorted((out / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert len(folders) == 2 and all(f.name.split("-")[3] == run_id for f in folders), folders
    launches = [wandb_records(folder / f"run-{run_id}.wandb") for folder in folders]
    runs = [r.run for records in launches for r in records if r.WhichOneof("record_type") == "run"]
    assert [(r.run_id, r.project, r.display_name) for r in runs] == [(run_id, "ijepa", "tiny_cpu")] * 2
    configs = [{item.key: json.loads(item.value_json) for item in r.config.update} for r in runs]  # the resolved
    assert [c["optimization"]["max_steps"] for c in configs] == [2, 4]                               # config
    assert all(c["logging"]["wandb"] == "offline" and c["data"]["shards"] == str(shards) for c in configs)

    csv = logged_losses(out)  # the CSV monitor's losses: W&B logs the same values at the same steps
    for steps, pictured, records in zip([(1, 2), (3, 4)], [[1, 2], [4]], launches):  # pictures at 1, then every 2
        rows = history(records)
        losses = {int(r["global_step"]): float(r["Train/loss"]) for r in rows if "Train/loss" in r}
        assert losses == pytest.approx({s: csv[s] for s in steps}, rel=1e-6)
        assert [int(r["global_step"]) for r in rows if r.get("Masks/first_images/_type") == '"image-file"'] == pictured
    assert any((folders[0] / "files" / "media" / "images" / "Masks").glob("first_images_*.png"))

    for log in (first, second):  # W&B's own banner silenced; the loop's line says where the run is and how to upload
        assert not any(line.startswith("wandb:") for line in log.splitlines()), log[-3000:]
        assert f"W&B: offline run {run_id} in {out / 'wandb'}" in log and f"wandb sync {out / 'wandb'}" in log
    dry = ok(launch([str(Path(python([])[0]).parent / "wandb"), "sync", "--dry-run", str(out / "wandb")],
                    env=wandb_env, timeout=60))
    assert "Would sync 2 run(s)" in dry, dry  # the upload the line names finds both launches


def test_online_without_an_api_key_stops_at_the_start_with_one_line(digit_shards, wandb_env, tmp_path):
    proc = launch(python(train_args(digit_shards["train"], tmp_path, "logging.wandb=online",
                                    "optimization.max_steps=2")), env=wandb_env, timeout=120)
    lines = error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: logging.wandb online: W&B could not start the run (No API key configured")
    assert "`wandb login`" in lines[0] and "WANDB_API_KEY" in lines[0] and "logging.wandb offline" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def test_online_with_a_server_that_does_not_answer_stops_within_the_timeout(digit_shards, wandb_env, tmp_path):
    """A key, but nothing listens at the server's address: W&B gives up after WANDB_INIT_TIMEOUT, one line."""
    env = {**wandb_env, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}",
           "WANDB_INIT_TIMEOUT": "3"}
    started = time.monotonic()
    proc = launch(python(train_args(digit_shards["train"], tmp_path, "logging.wandb=online",
                                    "optimization.max_steps=2")), env=env, timeout=120)
    lines = error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: logging.wandb online: W&B could not start the run (") and \
        "connection refused" in lines[0] and "within 3 s" in lines[0] and "logging.wandb offline" in lines[0], lines[0]
    assert time.monotonic() - started < 60
