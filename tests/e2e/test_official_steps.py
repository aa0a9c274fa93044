"""Fidelity to the official I-JEPA training step: eight fp32 CPU steps of train.py's own step (the DeepSpeed engine,
AdamW, set_schedules, micro_step, the target EMA) from the official initial weights, on the official images and masks,
reproduce the official code's losses, schedules and final weights (tests/fixtures/official_train_steps, README.md
there). The steps run in tests/e2e/official_steps_worker.py: DeepSpeed needs a process group, which must not outlive
the test."""
import json
import sys

from launches import launch, master_port, no_shm_leftovers, ok  # noqa: F401  (the fixture is autouse)

# The fixture's tolerances (its README): a step one schedule step ahead moves the loss by >= 2.6e-4 relative.
LOSS_REL, SCHEDULE_REL, WEIGHTS_ABS = 1e-5, 1e-9, 1e-4


def test_eight_steps_reproduce_the_official_losses_schedules_and_weights(tmp_path):
    out = tmp_path / "steps.json"
    world = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(master_port())}
    ok(launch([sys.executable, "tests/e2e/official_steps_worker.py", str(out)], timeout=300, env=world))
    worst = json.loads(out.read_text())["max"]
    print("max differences from the official steps:", worst)
    assert worst["loss_rel"] <= LOSS_REL, worst
    assert max(worst["lr_rel"], worst["wd_rel"], worst["momentum_rel"]) <= SCHEDULE_REL, worst
    for part in ("encoder", "predictor", "target_encoder"):
        assert worst[f"{part}_abs"] <= WEIGHTS_ABS, (part, worst)
