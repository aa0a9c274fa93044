"""The run's monitors: DeepSpeed's TensorBoard and CSV monitors, driven by the loop (rank 0), and the pictures beside
their scalars.

    monitor = build_monitor(cfg, plan)                    # rank 0's Progress
    monitor.write_events([("Train/loss", 0.41, 10)]);  write_image(monitor, "Masks/first_images", picture, 10)
"""
from __future__ import annotations

from pathlib import Path


def build_monitor(cfg, plan):
    """DeepSpeed's TensorBoard and CSV monitors, driven by train.py (the engine's own monitor would read the loss
    back to the host every step). `plan`: the run plan (training.plan.RunPlan: its run_id names the run)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    where = {"output_path": str(Path(cfg.run.out_dir) / "logs"), "job_name": cfg.run.name}
    return MonitorMaster(get_monitor_config({"tensorboard": {"enabled": cfg.logging.tensorboard, **where},
                                             "csv_monitor": {"enabled": cfg.logging.csv, **where}}))


def write_image(monitor, tag: str, picture, step: int) -> None:
    """An (H, W, 3) uint8 picture into the run's TensorBoard log beside the scalars (rank 0; nothing when
    logging.tensorboard is off: DeepSpeed's CSV monitor takes scalars only)."""
    writer = monitor.tb_monitor.summary_writer if monitor.tb_monitor is not None else None
    if writer is not None:
        writer.add_image(tag, picture, step, dataformats="HWC")
        writer.flush()
