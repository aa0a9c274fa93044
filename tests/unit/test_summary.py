"""summary.json across launches (training/progress.py): the whole run's figures summed over its launches, each step
counted once when a launch resumes from an earlier checkpoint, the seconds measured from the process's start, and
the report's header reading it back. (A real run resumed once, its summary and report: e2e/test_run_report.py.)"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from training.progress import process_seconds, write_summary


def launch(first: int, last: int, seconds: float, world_size: int = 1, batch: int = 16, **extra) -> dict:
    return {"first_step": first, "last_step": last, "world_size": world_size, "images": (last - first + 1) * batch,
            "seconds": seconds, "loop_seconds": seconds / 4, "ended": "last step", **extra}


CACHED = {"data_network_bytes": 0, "data_cache_read_bytes": 4096, "data_cache_hit_rate": 1.0}


def read(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_a_resumed_launch_adds_itself_to_the_run(tmp_path):
    write_summary(tmp_path, launch(1, 6, 40.0), skipped=0)
    first = read(tmp_path)
    assert (first["steps"], first["images"], first["seconds"], len(first["launches"])) == (6, 96, 40.0, 1)
    write_summary(tmp_path, launch(7, 12, 20.0, world_size=2, **CACHED), skipped=3)
    s = read(tmp_path)
    assert (s["first_step"], s["last_step"], s["steps"], s["images"], s["seconds"]) == (1, 12, 12, 192, 60.0)
    assert (s["world_size"], s["gpu_seconds"], s["skipped_samples"]) == (2, 80.0, 3)
    assert s["images_per_s_per_gpu"] == pytest.approx(192 / 80.0)  # images per GPU-second over all launches
    assert s["images_per_gpu_hour"] == pytest.approx(192 / 80.0 * 3600)
    assert [(x["first_step"], x["last_step"]) for x in s["launches"]] == [(1, 6), (7, 12)]
    assert s["launches"][0]["images_per_s_per_gpu"] == pytest.approx(96 / 40.0)
    assert s["launches"][1]["images_per_s_per_gpu"] == pytest.approx(96 / 40.0)  # 20 s on 2 ranks
    assert s["launches"][1]["data_network_bytes"] == 0 and "data_network_bytes" not in s


def test_a_launch_resumed_from_an_earlier_checkpoint_replaces_the_launches_it_redoes(tmp_path, caplog):
    """Steps 1-6, 7-12, then a resume from the checkpoint at step 6 for 7-10: steps 7-12 of the second launch are
    redone, so that launch leaves the summary and each step counts once."""
    for x in (launch(1, 6, 40.0), launch(7, 12, 30.0), launch(7, 10, 25.0)):
        with caplog.at_level(logging.INFO, logger="training.progress"):
            write_summary(tmp_path, x, skipped=0)
    s = read(tmp_path)
    assert [(x["first_step"], x["last_step"], x["seconds"]) for x in s["launches"]] == [(1, 6, 40.0), (7, 10, 25.0)]
    assert (s["steps"], s["images"], s["seconds"]) == (10, 160, 65.0)
    assert any("1 launch(es) that went past step 6, where this launch resumed, are replaced by it" in r.getMessage()
               for r in caplog.records)


def test_a_summary_of_another_form_is_not_counted_and_is_said(tmp_path, caplog):
    """A summary.json of one launch as train.py wrote it before it kept launches: this launch alone, a warning."""
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 6, "seconds": 2.1, "world_size": 1, "images": 96,
                                                       "images_per_s_per_gpu": 45.7}))
    with caplog.at_level(logging.WARNING, logger="training.progress"):
        write_summary(tmp_path, launch(7, 12, 20.0), skipped=0)
    s = read(tmp_path)
    assert (s["steps"], len(s["launches"])) == (6, 1)
    assert any("not a summary of launches (KeyError: 'launches'); summary.json counts this launch alone"
               in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process's start from Linux's /proc")
def test_the_seconds_count_from_the_process_start():
    """The same age as the kernel's own start time of this process (field 22 of /proc/self/stat, in clock ticks
    since boot): the imports and set-up before the loop are in it."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22; fields[0] is field 3
    age = float(Path("/proc/uptime").read_text().split()[0]) - started
    assert process_seconds() == pytest.approx(age, abs=0.5)
    assert process_seconds() > 0.5  # this process has imported torch by now
