"""The run's monitors: DeepSpeed's TensorBoard and CSV monitors driven by the loop (they write on rank 0), the
pictures beside their scalars, and Weights & Biases on rank 0 when logging.wandb is offline or online; closed when a
launch ends.

    monitor = build_monitor(cfg, plan, rank)              # on every rank
    monitor.write_events([("Train/loss", 0.41, 10)]);  monitor.write_image("Masks/first_images", picture, 10)
    monitor.close()

W&B takes the run id of the plan (the checkpoints carry it), so every launch of a run (a resume, a requeue) logs into
one W&B run. Its x-axis is STEP_KEY, the optimizer step, rather than W&B's own per-call counter: the loop hands over a
logging interval's losses after the diagnostics of its last step, and an offline launch counts its calls from 0.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from training import TrainingError

logger = logging.getLogger(__name__)

STEP_KEY = "global_step"  # the W&B x-axis of every scalar and picture: the optimizer step, as in TensorBoard
INIT_TIMEOUT_S = 60.0  # how long wandb.init may wait for the server (WANDB_INIT_TIMEOUT, when set, decides instead)


class Monitors:
    """Every monitor of a run behind one face: scalars (tag, value, step), pictures, close."""

    def __init__(self, master, wandb_run: "WandbMonitor | None" = None):
        self.master = master  # DeepSpeed's MonitorMaster (TensorBoard, CSV)
        self.wandb = wandb_run  # rank 0's W&B run; None when logging.wandb is off and on the other ranks

    def write_events(self, events: list[tuple[str, float, int]]) -> None:
        self.master.write_events(events)
        if self.wandb is not None:
            self.wandb.write_events(events)

    @property
    def tensorboard(self):
        """DeepSpeed's TensorBoard SummaryWriter; None when logging.tensorboard is off and on ranks other than 0."""
        return self.master.tb_monitor.summary_writer if self.master.tb_monitor is not None else None

    def write_image(self, tag: str, picture, step: int) -> None:
        """An (H, W, 3) uint8 picture into the run's TensorBoard log beside the scalars (nothing when
        logging.tensorboard is off: DeepSpeed's CSV monitor takes scalars only), and into W&B."""
        if (writer := self.tensorboard) is not None:
            writer.add_image(tag, picture, step, dataformats="HWC")
            writer.flush()
        if self.wandb is not None:
            self.wandb.write_image(tag, picture, step)

    def close(self) -> None:
        """The end of a launch's steps: what the monitors hold is written out; the W&B run is finished, so that the
        next launch of the run resumes it."""
        if (writer := self.tensorboard) is not None:
            writer.flush()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None


def wandb_rows(events: list[tuple[str, float, int]]) -> list[dict]:
    """The W&B log calls of a batch of events: one row per step, in step order, each with its step under STEP_KEY
    (a later event of the same tag and step wins, as in TensorBoard's view)."""
    rows: dict[int, dict] = defaultdict(dict)
    for tag, value, step in events:
        rows[int(step)][tag] = value
    return [{STEP_KEY: step, **rows[step]} for step in sorted(rows)]


class WandbMonitor:
    """Rank 0's W&B run. A failure after the run started (the service gone, a full disk) is one warning, and the run
    trains on without W&B: TensorBoard and the CSV log keep the scalars."""

    def __init__(self, run, out_dir: Path):
        self.run, self.out_dir = run, out_dir

    def write_events(self, events: list[tuple[str, float, int]]) -> None:
        for row in wandb_rows(events):
            self._log(row)

    def write_image(self, tag: str, picture, step: int) -> None:
        import wandb

        self._log({STEP_KEY: step, tag: wandb.Image(picture)})

    def close(self) -> None:
        import wandb

        if self.run is None:
            return
        offline, where = self.run.settings.mode == "offline", self.run.settings.sync_dir
        try:
            self.run.finish()
        except (wandb.Error, OSError) as err:
            logger.warning(f"W&B: the run did not finish cleanly ({one_line(err)}); what was logged stays in {where}")
        if offline:
            logger.info(f"W&B: offline run {self.run.id} saved in {where}; upload every launch of it with "
                        f"`wandb sync {self.out_dir / 'wandb'}`")
        self.run = None

    def _log(self, row: dict) -> None:
        import wandb

        if self.run is None:
            return
        try:
            self.run.log(row)
        except (wandb.Error, OSError) as err:
            logger.warning(f"W&B: logging failed at step {row[STEP_KEY]} ({one_line(err)}); the run goes on without "
                           f"W&B (TensorBoard and the CSV log keep the scalars)")
            self.run = None


def one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def wandb_monitor(cfg, plan, rank: int) -> WandbMonitor | None:
    """Rank 0's W&B run when logging.wandb is offline or online; None otherwise, without importing wandb."""
    if cfg.logging.wandb == "off" or rank != 0:
        return None
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise TrainingError(f"logging.wandb {cfg.logging.wandb}: the wandb package cannot be imported ({err}); "
                            f"install the requirements (pip install -r requirements.txt) or set logging.wandb off") \
            from None
    return open_wandb(cfg, plan)


def open_wandb(cfg, plan) -> WandbMonitor:
    """Starts (or, with the run id of an earlier launch, resumes) the W&B run of `cfg` in run.out_dir/wandb, with the
    resolved config; its own output silenced (no banner, no console capture: the log stays the loop's). Raises
    TrainingError, one line, when W&B cannot start: no API key, the server out of reach within the timeout."""
    import wandb

    from config import config_to_dict

    log, out_dir = cfg.logging, Path(cfg.run.out_dir)
    timeout = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": INIT_TIMEOUT_S}
    settings = wandb.Settings(silent=True, console="off", **timeout)
    wandb.setup(settings=settings)  # silent from here on: the login line comes before init's own settings apply
    try:
        run = wandb.init(project=log.wandb_project, entity=log.wandb_entity or None,
                         name=log.wandb_name or cfg.run.name, id=plan.run_id or None, resume="allow", mode=log.wandb,
                         dir=str(out_dir), config=config_to_dict(cfg), settings=settings)
    except wandb.Error as err:
        raise TrainingError(f"logging.wandb {log.wandb}: W&B could not start the run ({one_line(err)}); "
                            f"{start_fix(err, log.wandb, out_dir)}") from None
    run.define_metric(STEP_KEY, hidden=True)
    run.define_metric("*", step_metric=STEP_KEY)
    if log.wandb == "offline":
        logger.info(f"W&B: offline run {run.id} in {run.settings.sync_dir} (upload with `wandb sync "
                    f"{out_dir / 'wandb'}`)")
    else:
        logger.info(f"W&B: {'resumed' if run.resumed else 'started'} run {run.id}: {run.url}")
    return WandbMonitor(run, out_dir)


def start_fix(err: Exception, mode: str, out_dir: Path) -> str:
    """What to do when wandb.init failed with `err`: log in, reach the server, or go offline."""
    import wandb

    offline = "or set logging.wandb offline (and upload later with `wandb sync`)"
    if mode != "online":
        return f"check that {out_dir} is writable and wandb-core starts, or set logging.wandb off"
    if isinstance(err, wandb.errors.AuthenticationError):
        return f"check the API key (`wandb login --relogin`, WANDB_API_KEY), {offline}"
    if isinstance(err, wandb.errors.CommError):
        waited = os.environ.get("WANDB_INIT_TIMEOUT", f"{INIT_TIMEOUT_S:g}")
        return (f"check that this node reaches the W&B server within {waited} s (WANDB_BASE_URL, a proxy; "
                f"WANDB_INIT_TIMEOUT sets the wait) and that logging.wandb_entity and wandb_project are yours, "
                f"{offline}")
    return f"log in with `wandb login` or set WANDB_API_KEY, {offline}"


def build_monitor(cfg, plan, rank: int) -> Monitors:
    """DeepSpeed's TensorBoard and CSV monitors, driven by train.py (the engine's own monitor would read the loss
    back to the host every step), and W&B on rank 0 when logging.wandb is not off (wandb is imported only then).
    `plan`: the run plan (training.plan.RunPlan: its run_id names the run). Called on every rank (`rank`: this one)."""
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    where = {"output_path": str(Path(cfg.run.out_dir) / "logs"), "job_name": cfg.run.name}
    master = MonitorMaster(get_monitor_config({"tensorboard": {"enabled": cfg.logging.tensorboard, **where},
                                               "csv_monitor": {"enabled": cfg.logging.csv, **where}}))
    return Monitors(master, wandb_monitor(cfg, plan, rank))
