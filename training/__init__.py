"""Training, as train.py runs it on every rank (training/loop.py: fit):

1. plan.py        every value of the run computed once, before anything is touched: the batch layout on this many
                  ranks, steps per epoch, schedule lengths, the checkpoint a resume takes and what it must keep.
2. guard.py       around the run: the process group, stop signals, the launcher watch and step watchdog, run.out_dir
                  held by rank 0, and whatever ends the run worded as one line (faults.py: the mechanisms).
3. loop.py        the Trainer built (engine.py: DeepSpeed over the context encoder and predictor; target_ema.py: the
                  target encoder), then the steps: schedules (schedules.py), micro steps, the EMA, the agreed checks,
                  the log (progress.py) and the checkpoints.
4. checkpoints.py saving and restoring, with integrity.py (the COMPLETE marker and its digests), states.py (what
                  else a checkpoint holds, read weights-only) and universal.py (a resume on another world size).

Also here: distributed.py (the process group and the few collectives), out_dir.py (run.out_dir's lock and room),
slurm.py, metrics.py, sample_log.py. Only engine.py, target_ema.py, distributed.py and the checkpoint modules import
DeepSpeed, inside the functions that need it.
"""
from util.errors import UserError


class TrainingError(UserError):
    """Training cannot go on; the message says why (which step, which checkpoint, which setting)."""
