"""Training: the DeepSpeed engine and its step (engine), the loop (loop), checkpoints, the target encoder's EMA
(target_ema), schedules, distributed helpers, the data wiring (data) and the figures logged (metrics). Only the
engine, the EMA and the distributed helpers import DeepSpeed, inside the functions that need it."""


from util.errors import UserError


class TrainingError(UserError):
    """Training cannot go on; the message says why (which step, which checkpoint, which setting)."""
