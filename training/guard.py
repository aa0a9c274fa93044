"""Everything around a run's steps, in one context manager: the process group, the stop signals, the launcher watch
and the step watchdog, run.out_dir held by rank 0 for the whole run, and what ends a run worded as one line.

    with guarded(cfg, plan) as guard:        # guard.device, guard.rank, guard.stop, guard.watchdog
        ... the steps, each followed by guard.watchdog.step_done(step) ...

The mechanisms (signals, launchers, the watchdog thread, lost ranks) are training/faults.py's; this module wires them
for one run. docs/training.md, "Preemption" and "A rank that dies or hangs".
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import torch

from config import config_to_yaml
from pipeline import DataError
from training import TrainingError, slurm
from training.checkpoints import checkpoint_dir, clean_crashed_saves, complete_tags, intact_line
from training.distributed import (on_rank0, release_shm_buffers, remove_dead_shm_buffers, setup_distributed,
                                  single_process_env)
from training.faults import Peers, StopSignal, Watchdog, exit_now, folder_id, is_comm_failure, quiet_threads_while
from training.out_dir import is_out_of_space, locked_out_dir
from util.files import write_file_atomic

logger = logging.getLogger(__name__)


class Guard:
    """What guards a run's steps on this rank: where it runs, its stop signal, its watchdog, and run.out_dir's
    identity once claimed (a folder made again at its path is not it)."""

    def __init__(self, cfg, device: torch.device, rank: int, stop: StopSignal, peers: Peers):
        self.cfg, self.out_dir = cfg, Path(cfg.run.out_dir)
        self.device, self.rank, self.stop, self.peers = device, rank, stop, peers
        self.watchdog = Watchdog(stop, cfg.run.timeout_s, rank, on_stall=self.stalled)
        self.out_id = None

    def out_dir_gone(self) -> bool:
        """Whether run.out_dir was deleted or moved since the run claimed it."""
        return self.out_id is not None and folder_id(self.out_dir) != self.out_id

    def writes_failing(self) -> bool:
        """Whether a background writer's failure (the TensorBoard writer's thread) is one the run's line explains:
        run.out_dir vanished, or its disk is full (under 1 MiB free: the same error reaches the loop at its next write,
        and Guard.failure words it)."""
        if self.out_dir_gone():
            return True
        try:
            return shutil.disk_usage(self.out_dir).free < 1 << 20
        except OSError:
            return False

    def vanished(self, step: int) -> str:
        return (f"run.out_dir {self.out_dir} vanished at step {step} (deleted or moved): nothing to log or checkpoint "
                f"into, the run stops; put the folder back and resume with --resume auto, or start again")

    def failure(self, err: BaseException) -> BaseException:
        """What ended the run, as one line: run.out_dir vanished (a write failed, or a peer stopped because of it),
        its disk is full (whichever write hit it first: a log, the TensorBoard events, summary.json, a checkpoint's
        run.json), or a peer died or hung (a collective failed); any other error as it is."""
        step = self.watchdog.step + 1
        if self.out_dir_gone():
            return TrainingError(self.vanished(step))
        if is_out_of_space(err):
            return TrainingError(disk_full_line(self.out_dir, err, step))
        if isinstance(err, RuntimeError) and is_comm_failure(err):
            return TrainingError(f"{self.peers.lost() or 'a rank not responding'} at step {step}; "
                                 f"{self.restart()} (the collective said: "
                                 f"{str(err).splitlines()[0][:200]})")
        return err

    def stalled(self, step: int, waited: float) -> None:
        """The watchdog's end of the run (from its thread): the step that did not finish, what this host can tell of
        why, where to resume from; then the process exits."""
        who = (self.peers.lost()
               or "no rank on this host is gone or stopped: a rank elsewhere, a collective or the data hung")
        exit_now(f"step {step} stalled: not finished after {waited:.0f} s (run.timeout_s {self.cfg.run.timeout_s:g}); "
                 f"{who}; the run stops; {self.restart()}")

    def restart(self) -> str:
        return restart_line(self.out_dir)


def restart_line(out_dir: Path) -> str:
    """How a run goes on, the end of the line that stops it: from its last complete checkpoint, or, when it saved
    none, from the start."""
    tags = complete_tags(checkpoint_dir(out_dir))
    if not tags:
        return "no complete checkpoint yet: run the same command again to start over"
    return f"last complete checkpoint {checkpoint_dir(out_dir) / tags[-1]}; resume with --resume auto"


def disk_full_line(out_dir: Path, err: BaseException, step: int) -> str:
    """A write that found the disk full, named with the file it was writing (when the error says) and the
    checkpoint the run goes on from (a save the full disk cut short: --resume auto skips it, the next start removes
    it)."""
    where = f" writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
    return (f"the disk holding run.out_dir {out_dir} is full (no space left{where}, at step {step}); "
            f"{intact_line(checkpoint_dir(out_dir))}: free some space and run the same command with --resume auto")


@contextlib.contextmanager
def guarded(cfg, plan):
    """The guard of a run of `cfg` as `plan` lays it out (training.plan.RunPlan), on every rank; see the module's
    docstring. A RuntimeError or OSError that ends the run leaves as the one line Guard.failure words."""
    single_process_env()
    if os.environ.get("LOCAL_RANK", "0") == "0" and (dead := remove_dead_shm_buffers()):
        logger.info(f"removed {len(dead)} DeepSpeed shared-memory buffer(s) that dead runs left in /dev/shm: "
                    f"{', '.join(p.name for p in dead[:4])}{' …' if len(dead) > 4 else ''}")
    stop = StopSignal(None if cfg.run.requeue_signal == "none" else cfg.run.requeue_signal)
    try:
        device, rank, world_size = setup_distributed(cfg.run.device, cfg.run.timeout_s)
        if world_size != plan.world_size:
            raise TrainingError(f"the launcher set WORLD_SIZE {plan.world_size} but the process group has "
                                f"{world_size} ranks: launch with deepspeed, torchrun or plain python")
        guard = Guard(cfg, device, rank, stop, Peers.collect(rank))
        logger.info(f"launcher: {launched_by(guard.watchdog.launchers, os.environ)}: {guard.peers.layout()}; "
                    f"rendezvous {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        if rank == 0 and (lone := slurm.lone_batch_shell(os.environ)):
            logger.warning(lone)
        with contextlib.ExitStack() as held, guard.watchdog, quiet_threads_while(guard.writes_failing):
            try:
                on_rank0(claim_out_dir, held, cfg, plan)  # rank 0 holds run.out_dir's lock until the run ends
                guard.out_id = folder_id(guard.out_dir)
                yield guard
            except (RuntimeError, OSError) as err:  # one line, not a collective's or a write's traceback
                raise guard.failure(err) from None
            except DataError as err:  # the data's own line says what to fix; then how the run goes on
                raise TrainingError(f"{err}; then: {guard.restart()}") from None
        # Every rank is past the last collective: tear the group down before the interpreter exits, so that no
        # rank's communication threads are destroyed mid-flight ("terminate called without an active exception").
        torch.distributed.destroy_process_group()
    finally:
        release_shm_buffers()


def claim_out_dir(held: contextlib.ExitStack, cfg, plan) -> None:
    """Rank 0: locks run.out_dir until `held` closes (one run at a time), removes the folders of saves that crashed,
    writes config.yaml (the config, with the plan's values as comments)."""
    out_dir = Path(cfg.run.out_dir)
    held.enter_context(locked_out_dir(out_dir))
    clean_crashed_saves(out_dir)
    write_file_atomic(out_dir / "config.yaml", (config_to_yaml(cfg) + plan.as_comments()).encode())


def launched_by(launchers: list, env) -> str:
    """The start line's launcher: the nearest launcher process (torchrun, DeepSpeed's), srun, or none."""
    if launchers:
        return launchers[0][1]
    if slurm.in_srun_step(env):
        return slurm.describe_step(env)
    return "none (one process)" if env.get("WORLD_SIZE", "1") == "1" else "the environment (RANK, WORLD_SIZE set)"
