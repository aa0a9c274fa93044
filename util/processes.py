"""This process and the ones it starts: workers forked (the shard writer's pool, DataLoader workers) from a process
that holds other libraries' objects, and an exit that skips the interpreter's teardown."""
from __future__ import annotations

import atexit
import gc
import os
import sys
from contextlib import contextmanager


@contextmanager
def forking_workers():
    """Around the code that forks worker processes: the objects that exist now are frozen out of the garbage
    collector (gc.freeze) while the children fork, so that no child ever collects them: a child that collects a
    DALI pipeline left over in the parent waits forever for threads it does not have. The parent's collector takes
    them back afterwards (gc.unfreeze)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def exit_without_teardown(code: int) -> None:
    """Ends the process with `code` once what it wrote is out, without the interpreter's teardown: the atexit
    handlers run (logging's flush, multiprocessing's children), stdout and stderr are flushed, then os._exit. The
    teardown it skips is library destructors after the work is done (torch, DeepSpeed, DALI: seconds of a short run;
    docs/training.md). The caller has closed or flushed every file it wrote (checkpoints, logs, monitors)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
