"""The collapse alarm and the best checkpoint on real runs of train.py (one process, the tiny config, the digits).

The collapse is made, not mocked: ema.momentum [0, 0] makes the target encoder the context encoder itself, so the
trivial solution (targets that carry nothing of the image, which the predictor matches from the positions alone) is
one the stop-gradient alone must keep the run from; lr 5e-2 from step 0 (no warmup: 50x the recipe's peak) lets the
first steps jump into it. Measured with the digits as the fixed set (docs/training.md, "Collapse"): the patch tokens'
effective rank is 8.4 at step 2, then 1.2-1.3 of 96 from step 4 on, the pooled features' falls from 4.6 to 1.5-1.7,
the kNN top-1 from 31% to 12-16% (chance: 10%), while the loss goes on as in a healthy run; under 0.5 x the peak for
the checks of steps 4, 6 and 8, the alarm fires at step 8. The same run length on the recipe's settings keeps the
tokens' rank within a few percent of its peak (no alarm). Unit tests of the rule, the moments and the best's files:
unit/test_collapse_rule.py, unit/test_best_checkpoint.py."""
import importlib
import json

from launches import error_lines, launch, logged, no_shm_leftovers, ok, python, train_args  # noqa: F401

eval_main = importlib.import_module("eval")  # the entry script (its name shadows the builtin)
COLLAPSE = ("ema.momentum=[0.0,0.0]", "optimization.warmup_epochs=0", "optimization.start_lr=5e-2",
            "optimization.lr=5e-2")
CHECKS = ("optimization.max_steps=10", "logging.diagnostics_every=2")


def alarms(output: str) -> list[str]:
    return [line for line in output.splitlines() if "collapse alarm:" in line]


def test_a_collapse_warns_once_and_the_best_checkpoint_before_it_is_kept_for_eval(digit_shards, tmp_path, capsys):
    """logging.collapse warn, with the probe ranking every save (keep_best, keep_last 1): one warning line at step 8
    and the alarm's TensorBoard flag; the checkpoint of the best probe, saved before the fall, outlives keep_last as
    checkpoints/best, and eval.py evaluates it."""
    out = tmp_path / "run"
    log = ok(launch(python(train_args(digit_shards["train"], out, *COLLAPSE, *CHECKS, "checkpoint.every_steps=2",
                                      "checkpoint.keep_last=1", "checkpoint.keep_best=true", "logging.probe_every=2",
                                      f"logging.probe_shards={digit_shards['val']}"))))
    tokens = logged(out, "Diagnostics_token_rank")
    assert tokens[2] > 6 and max(tokens[s] for s in (4, 6, 8, 10)) < 2, tokens  # the collapse itself
    assert logged(out, "Diagnostics_token_rank_ceiling")[2] == 96  # min(449 images - 1, 96 dims)
    [line] = alarms(log)
    assert line.startswith("collapse alarm: step 8: effective rank of the patch tokens ") and \
        "(step 2) for 3 checks in a row, since step 4" in line, line
    assert logged(out, "Diagnostics_collapse_alarm") == {2: 0.0, 4: 0.0, 6: 0.0, 8: 1.0, 10: 1.0}

    knn = logged(out, "Probe_knn_top1")
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    saved = {s: v for s, v in knn.items() if s % 2 == 0}
    assert best["knn_top1"] == max(saved.values()) and best["step"] == min(s for s, v in saved.items()
                                                                           if v == best["knn_top1"])
    assert best["step"] < 10 and not (out / "checkpoints" / best["tag"]).exists()  # keep_last pruned its tag
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["best", "step00000010"]
    assert json.loads((out / "checkpoints" / "best" / "run.json").read_text())["step"] == best["step"]

    code = eval_main.main(["--checkpoint", str(out / "checkpoints" / "best"), "--train-shards",
                           str(digit_shards["val"]), "--val-shards", str(digit_shards["val"]), "--limit", "60",
                           "--epochs", "1", "--attentive-epochs", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert printed.out.count("checkpoint") >= 1 and "random init" in printed.out


def test_a_collapse_stops_the_run_with_a_checkpoint_and_one_line(digit_shards, tmp_path):
    """logging.collapse stop, the fixed set from the training shards (no probe): the run saves where the alarm
    fired and exits 1 with the alarm as its one error line; that save prunes nothing (keep_last 1 keeps step 4 beside
    it: the weights before the fall)."""
    out = tmp_path / "run"
    proc = launch(python(train_args(digit_shards["train"], out, *COLLAPSE, *CHECKS, "logging.collapse=stop",
                                    "checkpoint.every_steps=4", "checkpoint.keep_last=1")))
    assert proc.returncode == 1, proc.stderr[-3000:]
    [line] = error_lines(proc)
    assert line.startswith("error: collapse alarm: step 8: "), line
    assert len(alarms(proc.stderr)) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step00000004", "step00000008"]
    assert (out / "checkpoints" / "step00000008" / "COMPLETE").is_file()
    assert logged(out, "Diagnostics_effective_rank_ceiling")[2] == 96  # min(1024 images - 1, 96 dims)
    assert max(logged(out, "Train_loss")) == 8  # stopped there


def test_a_healthy_run_of_the_same_length_raises_no_alarm(digit_shards, tmp_path):
    out = tmp_path / "run"
    log = ok(launch(python(train_args(digit_shards["train"], out, *CHECKS, "logging.collapse=stop"))))
    assert alarms(log) == []
    tokens = logged(out, "Diagnostics_token_rank")
    assert min(tokens.values()) > 0.9 * max(tokens.values()), tokens
    assert set(logged(out, "Diagnostics_collapse_alarm").values()) == {0.0}
