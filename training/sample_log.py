"""An audit of the data order: with logging.sample_log on, each rank appends one line per batch it reads to
`<run.out_dir>/samples/rank<global rank>.tsv`:

    step  epoch  world_size  rank  local_rank  node_rank  key,key,...

A resumed run appends (lines of steps it redoes come again, later in the file); the rank, local rank and node rank
say which process of which launch read the batch. Off by default: the lines cost a little I/O per batch.
"""
from __future__ import annotations

import os
from pathlib import Path


class SampleLog:
    def __init__(self, out_dir: Path, rank: int, world_size: int):
        folder = Path(out_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        node = os.environ.get("GROUP_RANK", os.environ.get("CROSS_RANK", os.environ.get("NODE_RANK", "0")))
        self.prefix = f"{world_size}\t{rank}\t{os.environ.get('LOCAL_RANK', '0')}\t{node}"
        self.file = open(folder / f"rank{rank:05d}.tsv", "a", buffering=1)  # line-buffered: one write per batch

    def write(self, step: int, epoch: int, keys: list[str]) -> None:
        self.file.write(f"{step}\t{epoch}\t{self.prefix}\t{','.join(keys)}\n")  # closed with the process


def read_sample_log(out_dir: Path) -> list[dict]:
    """Every line of every rank's file, as dicts (step, epoch, world_size, rank, local_rank, node_rank, keys)."""
    rows = []
    for path in sorted((Path(out_dir) / "samples").glob("rank*.tsv")):
        for line in path.read_text().splitlines():
            step, epoch, world, rank, local, node, keys = line.split("\t")
            rows.append({"step": int(step), "epoch": int(epoch), "world_size": int(world), "rank": int(rank),
                         "local_rank": int(local), "node_rank": int(node), "keys": keys.split(",")})
    return rows
