"""Test-session set-up shared by every test file.

TRITON_INTERPRET must be set before anything defines a @triton.jit function (otherwise Triton finds "0 active
drivers" on a machine without a GPU), so it is set here, at the top of the first module pytest imports.
"""
import os

import torch  # noqa: E402  (importing torch defines no Triton kernel, so the switch below still takes effect)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run in Triton's interpreter on the CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from a test
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where there is none")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still part of `make test`")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on the GPU host: benchmarks/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so a failure reproduces."""
    random.seed(0)
    torch.manual_seed(0)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(0)


@pytest.fixture
def clean_switch(monkeypatch):
    """No IJEPA_* kernel override leaks in; the kernels' defaults are back after the test."""
    import kernels

    names = [op.env for op in kernels.REGISTRY.values()] + [kernels.CHECK_INDICES_ENV]
    for var in names:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in names:  # a test may have set one; monkeypatch restores the outer value afterwards
        monkeypatch.delenv(var, raising=False)
    kernels.configure()


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory):
    """Real handwritten digits (scikit-learn) → class folders → shards via the real CLI: {"train": 8 shards, "val"}."""
    from tools.digits import shard_digits

    return shard_digits(tmp_path_factory.mktemp("digits"))
