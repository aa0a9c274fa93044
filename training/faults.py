"""What ends a run that cannot go on, loudly and in one line: a stop signal, a launcher that vanished, a step that
stalled, a rank that died or hung.

    stop = StopSignal("USR1")                 # SIGTERM/SIGINT/SIGUSR1: checkpoint at the next agreed check, exit 0
    peers = Peers.collect(rank)               # every rank's host and pid, once after the process group exists
    with Watchdog(stop, timeout_s, rank, on_stall=...) as watchdog:   # on_stall: exit_now(the line)
        ... watchdog.step_done(step) after every step ...
    except RuntimeError as err: if is_comm_failure(err): raise TrainingError(f"{peers.lost()} at step ...")

- A launcher (`deepspeed`, its per-node `deepspeed.launcher.launch`, `torchrun`) that ends while its ranks train
  (SIGTERM to the `deepspeed` command kills it at once, without telling the ranks) counts as a stop signal: the ranks
  checkpoint and exit as on SIGTERM, instead of training on as orphans that hold run.out_dir's lock.
- Rank 0's watchdog: no step finished within run.timeout_s (a rank stopped, the data stopped, a collective that never
  returns) → one line naming the stalled step and the hung rank where it can tell, then the process exits; its
  launcher then ends the other ranks. The collectives time out after the same run.timeout_s on every rank.
- A collective that fails because a peer died (gloo: "Connection reset by peer"; NCCL: a remote error) or timed out
  becomes one line: which rank was lost (from the peers' processes on this host), the step, the last complete
  checkpoint, and `--resume auto`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)

LAUNCHER_MODULES = ("deepspeed.launcher.launch", "torch.distributed.run", "torch.distributed.launch")
LAUNCHER_SCRIPTS = ("deepspeed", "torchrun")
POLL_S = 1.0  # how often the watchdog thread looks at the launchers and the step clock


class StopSignal:
    """SIGTERM/SIGINT (preemption) and the requeue signal (Slurm's warning before a time limit, `--signal=USR1@300`)
    set a flag; the loop checkpoints and exits at the next agreed check, and after the requeue signal the job
    requeues itself. `received` names the first cause (a signal, or the launcher that ended) and `requeue` follows
    it: a later signal (Slurm's SIGTERM during the save, a second Ctrl-C) changes neither."""

    def __init__(self, requeue_signal: Optional[str] = None):
        self.received: Optional[str] = None
        self.requeue = False
        self.requeue_signum = signal.Signals[f"SIG{requeue_signal}"] if requeue_signal else None
        self.signals = (signal.SIGTERM, signal.SIGINT) + ((self.requeue_signum,) if self.requeue_signum else ())
        for sig in self.signals:
            signal.signal(sig, self._handle)

    def ignore_further(self) -> None:
        """Once the stop's checkpoint is complete: the stop signals are ignored to the end of the process. Python
        puts their default action back while it exits, and a SIGTERM then (Slurm's, to the steps of the job that
        just requeued itself) would end a rank exiting 0 as killed, leaving `srun` to cancel the step for
        seconds."""
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)  # kept while Python exits, unlike a handler

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.requeue = signum == self.requeue_signum


def launcher_name(cmdline: list[str]) -> Optional[str]:
    """The launcher a command line runs (DeepSpeed's runner or node launcher, torchrun), None for any other."""
    scripts = [Path(arg).name for arg in cmdline[:2]]
    return next((m for m in LAUNCHER_MODULES if m in cmdline), None) or next(
        (s for s in scripts if s in LAUNCHER_SCRIPTS), None)


def launcher_chain() -> list[tuple[object, str]]:
    """This process's launchers, as (psutil process, name): its parent and the parents above it, while they are
    launchers. A psutil process knows its start time, so a reused pid is not mistaken for it. Empty for
    `python train.py`."""
    import psutil

    chain, proc = [], psutil.Process().parent()
    while proc is not None:
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            break
        name = launcher_name(cmdline)
        if name is None:
            break
        chain.append((proc, f"{name} (pid {proc.pid})"))
        proc = proc.parent()
    return chain


def is_alive(proc) -> bool:
    """Whether a psutil process still runs (a zombie, ended but not yet reaped by its parent, does not)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Watchdog:
    """A daemon thread: turns a launcher's end into a stop, and (rank 0) ends the process when no step finished
    within `timeout_s` after `on_stall` logged why. Armed by `step_done`; `disarm` before work that is not a step."""

    def __init__(self, stop: StopSignal, timeout_s: float, rank: int, on_stall: Callable[[int, float], None]):
        self.stop, self.timeout_s, self.rank, self.on_stall = stop, timeout_s, rank, on_stall
        self.launchers = launcher_chain()
        self.step, self.since = 0, None  # the last step done; when (None: not armed)
        self.done, self.lock = threading.Event(), threading.Lock()
        self.thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def __enter__(self) -> "Watchdog":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()

    def step_done(self, step: int) -> None:
        """Step `step` is done (or, before the loop, the run stands at it): the clock starts again."""
        self.step, self.since = step, time.monotonic()

    def disarm(self) -> None:
        self.since = None

    def check_launchers(self) -> None:
        """A launcher of this process that ended becomes the stop's cause. Called by the thread every POLL_S, and by
        the check step at which another rank reported a stop first: ranks that share a launcher then name it alike,
        whichever rank's thread looked first."""
        gone = [name for proc, name in self.launchers if not is_alive(proc)]
        with self.lock:
            if gone and self.stop.received is None:
                self.stop.received = f"the end of its launcher {gone[0]}"
                logger.warning("the launcher %s ended: checkpointing at the next check and stopping", gone[0])

    def _run(self) -> None:
        while not self.done.wait(POLL_S):
            self.check_launchers()
            since = self.since
            if self.rank == 0 and since is not None and time.monotonic() - since > self.timeout_s:
                self.on_stall(self.step + 1, time.monotonic() - since)
                return


class Peers:
    """Every rank's host and pid, gathered once after the process group exists: what names a lost rank."""

    def __init__(self, ranks: list[tuple[str, int]], rank: int):
        self.ranks, self.rank = ranks, rank

    @classmethod
    def collect(cls, rank: int) -> "Peers":
        from training.distributed import gather

        return cls(gather((socket.gethostname(), os.getpid())), rank)

    def layout(self, most: int = 4) -> str:
        """`2 ranks on 1 node (vm: ranks 0-1)`: the hosts in rank order with their ranks, the first `most` named."""
        runs: list[list] = []  # [host, first rank, last rank]
        for r, (host, _) in enumerate(self.ranks):
            if runs and runs[-1][0] == host and runs[-1][2] == r - 1:
                runs[-1][2] = r
            else:
                runs.append([host, r, r])
        hosts = len({host for host, _ in self.ranks})
        named = [f"{h}: rank {a}" if a == b else f"{h}: ranks {a}-{b}" for h, a, b in runs[:most]]
        more = f", … {len(runs) - most} more" if len(runs) > most else ""
        return (f"{len(self.ranks)} rank{'s' * (len(self.ranks) != 1)} on {hosts} node{'s' * (hosts != 1)} "
                f"({', '.join(named)}{more})")

    def lost(self, settle_s: float = 2.0) -> str:
        """Which ranks are gone or hung, as far as this host can see ("rank 1 lost (its process ended)", "rank 0
        hung (its process is stopped)"); ranks on other hosts are named by host. A killed process closes its sockets
        before it is a zombie: look again for up to `settle_s` until one is seen gone."""
        deadline = time.monotonic() + settle_s
        while not (said := self._look()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return said

    def _look(self) -> str:
        import psutil

        host, said, remote = socket.gethostname(), [], set()
        for r, (their_host, pid) in enumerate(self.ranks):
            if r == self.rank:
                continue
            if their_host != host:
                remote.add(their_host)
                continue
            try:
                status = psutil.Process(pid).status()
            except psutil.NoSuchProcess:
                status = psutil.STATUS_DEAD
            if status in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE):
                said.append(f"rank {r} lost (its process ended)")
            elif status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                said.append(f"rank {r} hung (its process is stopped)")
        if said:
            return ", ".join(said)
        if remote:
            return f"a rank on {', '.join(sorted(remote))} lost or not responding"
        return ""


def folder_id(path: Path) -> Optional[tuple[int, int]]:
    """The identity of a folder (device, inode); None when it is gone. A folder deleted or moved and then made again
    at the same path (DeepSpeed's CSV monitor makes its log folder on each write) has another identity."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def quiet_threads_while(explained: Callable[[], bool]):
    """Background threads that fail while `explained()` holds print nothing (the loop's one line says why: the
    TensorBoard writer's thread, for one, fails at once when run.out_dir vanishes); otherwise as usual."""
    default = threading.excepthook

    def hook(args):
        if not explained():
            default(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = default


def is_comm_failure(err: BaseException) -> bool:
    """A collective that failed because a peer died, hung past the timeout, or the network broke."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(s in text for s in (
        "gloo", "Gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "Timed out", "timed out",
        "timeout", "pair closure"))


def exit_now(message: str, code: int = 1) -> None:
    """From the watchdog thread: the one line, then the process ends at once (the main thread is stuck in a
    collective that will not return); the kernel releases run.out_dir's lock, the launcher ends the other ranks."""
    from training.distributed import release_shm_buffers

    logger.error("error: %s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    release_shm_buffers()
    os._exit(code)
