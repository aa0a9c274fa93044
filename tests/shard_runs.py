"""shard_dataset.py's main() run in this process as its CLI runs (the `run_main` fixture), and the shards a run wrote,
read back: every .tar and .idx file's bytes (two runs that should agree compare these), a tar's members by key.

    from shard_runs import read_members, run_main, shard_files  # noqa: F401  (run_main is a fixture)
"""
from __future__ import annotations

import logging
import subprocess
import tarfile
from pathlib import Path

import pytest

import shard_dataset


@pytest.fixture
def run_main(capsys, caplog):
    """shard_dataset.py's main() in this process, called like run_cli (e2e/test_shard_dataset_cli.py): a
    CompletedProcess whose stderr holds what main() printed (its `error:` line) and the log lines of this process (the
    summary, the refusals). The log lines of the forked workers (which shard is rebuilt, and why) reach only a real
    CLI's stderr: run_cli for those."""
    def run(src, dest, *flags) -> subprocess.CompletedProcess:
        argv = [str(src), str(dest), "--no-progress", *map(str, flags)]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = shard_dataset.main(argv)
        logged = "".join(f"{record.getMessage()}\n" for record in caplog.records)
        return subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err + logged)
    return run


def shard_files(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir()) if p.suffix in (".tar", ".idx")}


def read_members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """key → {ext: bytes} for one tar, straight from tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples
