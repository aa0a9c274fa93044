"""Forking worker processes (the shard writer's pool, DataLoader workers) from a process that holds other
libraries' objects."""
from __future__ import annotations

import gc


def collect_before_fork() -> None:
    """Collects this process's unreachable objects before it forks workers: a forked child that collects a DALI
    pipeline left over in the parent (Pipeline.__del__) waits forever for threads the child does not have (seen: a
    shard writer worker hung in Pipeline._shutdown after a DALI test had run in the same process)."""
    gc.collect()
