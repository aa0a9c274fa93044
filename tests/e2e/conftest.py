"""The fixtures of tests/e2e alone: they launch. (Every test here is marked slow by tests/conftest.py's collection
hook; the fixtures both tiers use are in tests/conftest.py.)"""
import pytest


@pytest.fixture(scope="session")
def trained_run(digit_shards, tmp_path_factory):
    """One process of train.py on the digits, 2 steps of 16 images, its checkpoint step00000002 (keep_last 1): the
    checkpoint the refusal batteries copy, plant and damage (test_train_hardening.py, test_hostile.py). Read-only:
    copy it before changing anything."""
    from launches import launch, ok, python, train_args

    out = tmp_path_factory.mktemp("trained")
    ok(launch(python(train_args(digit_shards["train"], out, "optimization.max_steps=2", "checkpoint.every_steps=2",
                                "checkpoint.keep_last=1"))))
    return out
