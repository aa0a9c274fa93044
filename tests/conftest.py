"""Test-session set-up shared by every test file, and the tier rule.

The tests live in two folders: tests/unit, what `make check` runs (no test there starts a process), and tests/e2e
(launches, servers, Slurm: every test that starts a process; each is marked slow here, so `-m "not slow"` leaves them
out). The helpers both use are modules in tests/ (this folder is on sys.path, as pytest puts a conftest's folder
there); the fixtures of e2e alone are in tests/e2e/conftest.py.

TRITON_INTERPRET must be set before anything defines a @triton.jit function (otherwise Triton finds "0 active
drivers" on a machine without a GPU), so it is set here, at the top of the first module pytest imports.
"""
import os

import torch  # noqa: E402  (importing torch defines no Triton kernel, so the switch below still takes effect)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run in Triton's interpreter on the CPU
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: two workers share the two cores; torch's own threads in each
    torch.set_num_threads(1)               # would only fight over them (as OMP_NUM_THREADS=1 in the launched runs)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from a test
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Helper modules whose fixtures tests of both tiers use (each module-scoped one is set up once per test file).
pytest_plugins = ("export_checks", "image_factories", "index_damage", "shard_runs")
UNIT, E2E = (Path(__file__).resolve().parent / tier for tier in ("unit", "e2e"))


def in_folder(item, folder: Path) -> bool:
    return folder in item.path.resolve().parents


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped where there is none")
    config.addinivalue_line("markers", "slow: a test under tests/e2e (it starts a process), marked so by "
                                       "tests/conftest.py; `make test` runs it, `make check` (tests/unit) does not")


# The files that take longest in `make test` (tens of seconds to minutes: they launch training), longest first. They
# are queued before the others, so that the two xdist workers (--dist loadfile --no-loadscope-reorder) finish
# together rather than one idling while the other runs a long file that came last. Order only: a file missing here
# runs, later. test_compile.py by its cost on a new environment (inductor compiles: 38 s; 13 s once cached).
LONG_FILES = ("test_elastic.py", "test_train.py", "test_train_hardening.py", "test_faults.py", "test_micro_batch.py",
              "test_bench.py", "test_slurm_cluster.py", "test_compile.py", "test_quick_start.py", "test_collapse.py",
              "test_warm_start.py", "test_triton_kernels.py", "test_hostile.py", "test_wandb.py", "test_cache_order.py",
              "test_s3_shards.py", "test_disk_full.py")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a test under tests/e2e is slow however it was selected
def pytest_collection_modifyitems(config, items):
    for item in items:
        if in_folder(item, E2E):
            item.add_marker(pytest.mark.slow)
    first = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(LONG_FILES)))  # stable: a file's tests stay in order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on the GPU host: benchmarks/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _the_tier_rule(request, monkeypatch):
    """`make check` (tests/unit) starts no process: a test under tests/unit that is marked slow, or that starts a
    process, fails, naming it and saying to move it to tests/e2e; a test file outside both folders fails too. (Fixtures
    of a wider scope are set up before this one: a session fixture that launches belongs in tests/e2e/conftest.py.)
    Forked workers (the shard writer's pool, DataLoader workers) are not new processes of a program."""
    nodeid = request.node.nodeid
    if in_folder(request.node, E2E):
        return
    if not in_folder(request.node, UNIT):
        pytest.fail(f"{nodeid}: a test file lives in tests/unit (it starts no process: make check) or in tests/e2e "
                    f"(it starts one)", pytrace=False)
    if request.node.get_closest_marker("slow"):
        pytest.fail(f"{nodeid} is marked slow: move it to tests/e2e (tests/unit is make check's, whose tests start no "
                    f"process)", pytrace=False)

    def refuse(self, args, *more, **options):
        raise AssertionError(f"{nodeid} starts a process ({args!r}): move it to tests/e2e or run it in process")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


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
    """Real handwritten digits (scikit-learn) → class folders → shards by shard_dataset.py's main in this process:
    {"train": 8 shards of 1,348 images, "val"} (the CLI in a fresh interpreter: e2e/test_shard_dataset_cli.py, make
    demo)."""
    import shard_dataset
    from tools.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "img", 32)
    for split in ("train", "val"):
        assert shard_dataset.main([str(root / "img" / split), str(root / split), "--shard-size", "170",
                                   "--no-progress"]) == 0
    return {split: root / split for split in ("train", "val")}


@pytest.fixture(scope="session")
def small_shards(digit_shards, tmp_path_factory):
    """The first 192 training digits in 4 shards of 48 (shard_dataset.py's main in this process): an epoch is 4
    steps of a global batch of 48, 8 of 24."""
    import shard_dataset

    images = sorted((digit_shards["train"].parent / "img" / "train").rglob("*.jpg"))[:192]
    src = tmp_path_factory.mktemp("small") / "img"
    for path in images:
        (src / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, src / path.parent.name / path.name)
    dest = src.parent / "shards"
    assert shard_dataset.main([str(src), str(dest), "--shard-size", "48", "--no-progress"]) == 0
    return dest

