"""The run's monitors, on rank 0: DeepSpeed's TensorBoard and CSV monitors driven by the loop, the pictures beside
their scalars, closed when a launch ends.

    monitor = build_monitor(cfg, plan)                    # rank 0's Progress
    monitor.write_events([("Train/loss", 0.41, 10)]);  monitor.write_image("Masks/first_images", picture, 10)
    monitor.close()
"""
from __future__ import annotations

from pathlib import Path


class Monitors:
    """Every monitor of a run behind one face: scalars (tag, value, step), pictures, close."""

    def __init__(self, master):
        self.master = master  # DeepSpeed's MonitorMaster (TensorBoard, CSV)

    def write_events(self, events: list[tuple[str, float, int]]) -> None:
        self.master.write_events(events)

    def write_image(self, tag: str, picture, step: int) -> None:
        """An (H, W, 3) uint8 picture into the run's TensorBoard log beside the scalars (nothing when
        logging.tensorboard is off: DeepSpeed's CSV monitor takes scalars only)."""
        writer = self.master.tb_monitor.summary_writer if self.master.tb_monitor is not None else None
        if writer is not None:
            writer.add_image(tag, picture, step, dataformats="HWC")
            writer.flush()

    def close(self) -> None:
        """The end of a launch's steps: what the monitors hold is written out."""
        writer = self.master.tb_monitor.summary_writer if self.master.tb_monitor is not None else None
        if writer is not None:
            writer.flush()


def build_monitor(cfg, plan) -> Monitors:
    """DeepSpeed's TensorBoard and CSV monitors, driven by train.py (the engine's own monitor would read the loss
    back to the host every step). `plan`: the run plan (training.plan.RunPlan: its run_id names the run)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    where = {"output_path": str(Path(cfg.run.out_dir) / "logs"), "job_name": cfg.run.name}
    return Monitors(MonitorMaster(get_monitor_config({"tensorboard": {"enabled": cfg.logging.tensorboard, **where},
                                                      "csv_monitor": {"enabled": cfg.logging.csv, **where}})))
