"""A hostile user's battery: the user's commands with inputs that are wrong in ways a bad day produces. Each case
must end with a non-zero exit and one `error:` line that names what is wrong, never a traceback, and must not hang.
What is refused before any work runs the entry script's main(argv) in this process; the rest as subprocesses. (The
per-area batteries: unit/test_config_ranges, unit/test_index_damage, unit/test_source_hardening,
unit/test_eval_hardening, e2e/test_train_hardening.)"""
import importlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from launches import launch, train_main

ROOT = Path(__file__).resolve().parents[2]

# the settings of the session's trained checkpoint (e2e/conftest.py trained_run), so its resumes differ only as each
# case says
TRAIN = [sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--set", "data.backend=torch",
         "--set", "data.num_workers=0", "--set", "data.batch_size=16", "--set", "optimization.max_steps=1"]


def cases(tmp: Path, shards: Path, trained: Path) -> dict:
    """name → (argv, text the error line must contain). Paths under `tmp` are made here."""
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "empty").mkdir()
    (tmp / "garbage.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "tabs.yaml").write_text("run:\n\tname: x\n")
    incomplete = tmp / "incomplete" / "checkpoints" / "step00000002"
    shutil.copytree(trained / "checkpoints" / "step00000002", incomplete)
    (incomplete / "COMPLETE").unlink()
    bad_json = tmp / "bad_json" / "checkpoints" / "step00000002"
    shutil.copytree(trained / "checkpoints" / "step00000002", bad_json)
    (bad_json / "run.json").write_text("{not json")
    truncated = tmp / "truncated" / "checkpoints" / "step00000002"
    shutil.copytree(trained / "checkpoints" / "step00000002", truncated)
    states = truncated / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:5000])
    no_optim = tmp / "no_optim" / "checkpoints" / "step00000002"
    shutil.copytree(trained / "checkpoints" / "step00000002", no_optim)
    for f in no_optim.glob("*optim_states.pt"):
        f.unlink()
    data = ["--set", f"data.shards={shards}"]
    out = lambda name: ["--set", f"run.out_dir={tmp / name}"]  # noqa: E731
    return {
        "config missing": ([*TRAIN[:2], "--config", str(tmp / "nope.yaml")], "nope.yaml"),
        "config is a folder": ([*TRAIN[:2], "--config", str(tmp / "empty")], "empty"),
        "config is binary": ([*TRAIN[:2], "--config", str(tmp / "garbage.yaml")], "garbage.yaml"),
        "config is a list": ([*TRAIN[:2], "--config", str(tmp / "list.yaml")], "list.yaml"),
        "config has tabs": ([*TRAIN[:2], "--config", str(tmp / "tabs.yaml")], "tabs.yaml"),
        "override without =": ([*TRAIN, "--set", "optimization.lr"], "optimization.lr"),
        "override unknown key": ([*TRAIN, "--set", "optimization.learning_rate=1"], "learning_rate"),
        "override bad type": ([*TRAIN, "--set", "data.batch_size=many"], "data.batch_size"),
        "shards missing": ([*TRAIN, "--set", f"data.shards={tmp / 'nope'}", *out("r1")], str(tmp / "nope")),
        "shards is a file": ([*TRAIN, "--set", f"data.shards={tmp / 'a_file'}", *out("r2")], "a_file"),
        "shards folder empty": ([*TRAIN, "--set", f"data.shards={tmp / 'empty'}", *out("r3")], "empty"),
        "batch bigger than data": ([*TRAIN, *data, "--set", "data.batch_size=4096", *out("r4")], "4096"),
        "out_dir is a file": ([*TRAIN, *data, "--set", f"run.out_dir={tmp / 'a_file'}"], "a_file"),
        "resume missing": ([*TRAIN, *data, *out("r5"), "--resume", str(tmp / "nope")], str(tmp / "nope")),
        "resume incomplete": ([*TRAIN, *data, *out("r6"), "--resume", str(incomplete)], "incomplete"),
        "resume the run folder": ([*TRAIN, *data, *out("r11"), "--resume", str(trained)],
                                  f"{trained} is a run folder, not a checkpoint: give one of its"),
        "resume bad run.json": ([*TRAIN, *data, *out("r7"), "--resume", str(bad_json)], "run.json"),
        "resume truncated states": ([*TRAIN, *data, *out("r8"), "--resume", str(truncated)], "mp_rank_00"),
        "resume without optimizer": ([*TRAIN, *data, *out("r9"), "--resume", str(no_optim)], "step00000002"),
        "probe shards missing": ([*TRAIN, *data, *out("r10"), "--set", "logging.probe_every=1",
                                  "--set", f"logging.probe_shards={tmp / 'nope'}"], "nope"),
        "bench unknown suite": ([sys.executable, "bench.py", "--suite", "nope"], "nope"),
        "bench out folder missing": ([sys.executable, "bench.py", "--suite", "masks", "--out",
                                      str(tmp / "nope" / "r.json")], "nope"),
        "bench config missing": ([sys.executable, "bench.py", "--suite", "masks", "--config",
                                  str(tmp / "nope.yaml")], "nope.yaml"),
        "eval checkpoint missing": ([sys.executable, "eval.py", "--checkpoint", str(tmp / "nope.pth"),
                                     "--train-shards", str(shards), "--val-shards", str(shards)], "nope.pth"),
        "eval shards missing": ([sys.executable, "eval.py", "--checkpoint", str(trained / "checkpoints" /
                                 "step00000002"), "--train-shards", str(tmp / "nope"), "--val-shards", str(shards)],
                                "nope"),
        "shard_dataset source missing": ([sys.executable, "shard_dataset.py", str(tmp / "nope"), str(tmp / "s1")],
                                         "nope"),
        "shard_dataset dest is a file": ([sys.executable, "shard_dataset.py", str(ROOT / "tests" / "fixtures"),
                                          str(tmp / "a_file")], "a_file"),
    }


# Cases refused only once train.py has its process group (the checkpoint's states, which DeepSpeed loads): real
# subprocesses. Every other case is refused before any process group or work, so it runs the entry script's
# main(argv) in this process.
SUBPROCESS = {"resume truncated states", "resume without optimizer"}


def run(argv):
    try:
        return launch(argv, timeout=300)
    except subprocess.TimeoutExpired as err:
        return err


def run_main(argv, caplog, capsys) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` as SCRIPT's main(ARGS) in this process; stderr holds what it printed or logged."""
    script = argv[1].removesuffix(".py")
    if script == "train":
        code, lines = train_main(argv[2:], caplog)
        return subprocess.CompletedProcess(argv, code, "", "\n".join(lines))
    capsys.readouterr()
    code = importlib.import_module(script).main(argv[2:])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture(scope="module")
def table(digit_shards, trained_run, tmp_path_factory):
    return cases(tmp_path_factory.mktemp("hostile"), digit_shards["train"], trained_run)


@pytest.fixture(scope="module")
def launched(table):
    """The subprocess cases, two at a time (each is mostly start-up)."""
    names = sorted(SUBPROCESS)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(run, [table[name][0] for name in names])))


CASES = ["config missing", "config is a folder", "config is binary", "config is a list", "config has tabs",
         "override without =", "override unknown key", "override bad type", "shards missing", "shards is a file",
         "shards folder empty", "batch bigger than data", "out_dir is a file", "resume missing", "resume incomplete",
         "resume the run folder", "resume bad run.json", "resume truncated states", "resume without optimizer", "probe shards missing",
         "bench unknown suite", "bench out folder missing", "bench config missing", "eval checkpoint missing",
         "eval shards missing", "shard_dataset source missing", "shard_dataset dest is a file"]


@pytest.mark.parametrize("name", CASES)
def test_hostile_case_ends_in_one_clear_line(table, name, request, caplog, capsys):
    argv, named = table[name]
    proc = request.getfixturevalue("launched")[name] if name in SUBPROCESS else run_main(argv, caplog, capsys)
    assert not isinstance(proc, subprocess.TimeoutExpired), f"{name}: hung for 300 s"
    assert proc.returncode not in (0, None), f"{name}: exit 0\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, f"{name}:\n{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if "error" in line.split(":")[0].lower()]
    assert len(errors) == 1, f"{name}: {errors or proc.stderr[-2000:]}"
    assert named in errors[0], f"{name}: the error does not name {named!r}: {errors[0]}"


def test_every_case_is_listed(tmp_path):
    """CASES (the parametrization) and the table are the same set, so no case is silently left out."""
    trained = tmp_path / "t"
    (trained / "checkpoints" / "step00000002").mkdir(parents=True)
    for name in ("COMPLETE", "run.json", "mp_rank_00_model_states.pt", "x_optim_states.pt"):
        (trained / "checkpoints" / "step00000002" / name).write_bytes(b"x" * 6000)
    (tmp_path / "h").mkdir()
    assert sorted(cases(tmp_path / "h", tmp_path, trained)) == sorted(CASES)


def test_a_resume_with_nothing_left_to_train_says_so_and_exits_0(digit_shards, trained_run, tmp_path, caplog):
    """The session's run is at step 2; a resume of it with optimization.max_steps 1 has nothing to train: one line
    that says so, exit 0, nothing built or written."""
    argv = [*TRAIN[2:], "--set", f"data.shards={digit_shards['train']}", "--set", f"run.out_dir={tmp_path / 'r'}",
            "--resume", str(trained_run / "checkpoints" / "step00000002")]
    code, errors = train_main(argv, caplog)
    lines = caplog.messages
    assert code == 0 and not errors and lines[-1] == ("nothing to do: the run is at step 2 and optimization.max_steps is 1 (the "
                                       "schedule has 1680); raise optimization.max_steps to train on"), lines
    assert not (tmp_path / "r").exists()
