"""The monitors' W&B side in process: the loop's events as W&B rows, and logging.wandb off (or a rank other than 0)
never importing wandb. (W&B runs start its service process: tests/e2e/test_wandb.py.)"""
import sys
import types

import pytest

from config import load_config
from training import TrainingError
from training.monitors import STEP_KEY, wandb_monitor, wandb_rows

PLAN = types.SimpleNamespace(run_id="0123456789ab")


def test_a_logging_step_becomes_one_row_per_step_in_step_order():
    """The loop's order on a logging step: rank 0's diagnostics of step 3 first, then the interval's losses (steps
    1..3) with the schedules of step 3. W&B gets each step once, in order, its step under STEP_KEY."""
    events = [("Diagnostics/feature_std", 0.5, 3),
              ("Train/loss", 0.9, 1), ("Train/loss", 0.8, 2), ("Train/loss", 0.7, 3), ("Train/lr", 1e-3, 3)]
    assert wandb_rows(events) == [{STEP_KEY: 1, "Train/loss": 0.9}, {STEP_KEY: 2, "Train/loss": 0.8},
                                  {STEP_KEY: 3, "Diagnostics/feature_std": 0.5, "Train/loss": 0.7, "Train/lr": 1e-3}]


def test_the_later_event_of_a_tag_and_step_wins_and_no_events_log_nothing():
    assert wandb_rows([("Train/loss", 0.9, 5), ("Train/loss", 0.8, 5)]) == [{STEP_KEY: 5, "Train/loss": 0.8}]
    assert wandb_rows([]) == []


@pytest.fixture
def no_wandb(monkeypatch):
    """`import wandb` fails in this process for the test (a None entry in sys.modules stops the import)."""
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_wandb_off_never_imports_wandb(no_wandb, tmp_path):
    cfg = load_config("configs/tiny_cpu.yaml", overrides=[f"run.out_dir={tmp_path}"])
    assert cfg.logging.wandb == "off"  # the default
    assert wandb_monitor(cfg, PLAN, 0) is None


def test_only_rank_0_starts_wandb(no_wandb, tmp_path):
    cfg = load_config("configs/tiny_cpu.yaml", overrides=[f"run.out_dir={tmp_path}", "logging.wandb=offline"])
    assert wandb_monitor(cfg, PLAN, 1) is None
    with pytest.raises(TrainingError, match=r"^logging.wandb offline: the wandb package cannot be imported .*"
                                            r"pip install -r requirements.txt"):
        wandb_monitor(cfg, PLAN, 0)
