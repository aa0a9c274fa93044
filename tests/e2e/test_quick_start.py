"""README's quick start, run as written: the lines between `<!-- quick start -->` and `<!-- end quick start -->`, each
as its own process, in a fresh folder that holds only the commands and configs (as a checkout does), on the real
digits the first line writes. Two changes of scale, and only these: train.py stops after a few steps, and eval.py
fits its probes for one epoch on fewer images. What each line writes and prints is what README says it does; a
normal start prints no library notes about the GPU it did not find."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6  # train.py's steps here; README's run trains the whole schedule
SCALE = {"train.py": ["--set", f"optimization.max_steps={STEPS}"],
         "eval.py": ["--epochs", "1", "--attentive-epochs", "1", "--limit", "300"]}
NOISE = ("Setting accelerator to CPU", "No CUDA runtime", "built successfully", "Traceback")


def quick_start() -> list[list[str]]:
    """README's quick-start commands, as argv lists (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- quick start -->\n", 1)[1].split("<!-- end quick start -->", 1)[0].replace("\\\n", " ")
    return [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))
            and not argv[0].startswith("```")]


def checkpoint_tag(commands: list[list[str]]) -> str:
    """The checkpoint README's eval line names (the schedule's last step)."""
    names = [arg for argv in commands for arg in argv if "/checkpoints/" in arg]
    return Path(names[0]).name


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every quick-start line run in order in a fresh folder: {script: (argv, completed process)}."""
    here = tmp_path_factory.mktemp("quick_start")
    for name in ("configs", "train.py", "shard_dataset.py", "eval.py", "export.py", "report.py"):
        (here / name).symlink_to(ROOT / name)  # a script's folder is its real one: the packages import
    commands = quick_start()
    tag, ours = checkpoint_tag(commands), f"step{STEPS:08d}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `python -m tools.digits` from the checkout
    done = {}
    for argv in commands:
        assert argv[0] == "python", f"README's quick start runs python, not {argv[0]}: {argv}"
        script = argv[2] if argv[1] == "-m" else argv[1]
        args = [a.replace(tag, ours) for a in argv[1:]] + SCALE.get(script, [])
        proc = subprocess.run([sys.executable, *args], cwd=here, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(argv)} → exit {proc.returncode}\n{proc.stderr[-3000:]}"
        done.setdefault(script, []).append((argv, proc))
    return here, tag, done


def test_the_quick_start_runs_as_written_and_writes_what_readme_says(ran):
    here, tag, done = ran
    assert (here / "my_images" / "train").is_dir() and (here / "my_images" / "val").is_dir()
    for argv, proc in done["shard_dataset.py"]:
        assert (here / argv[3] / "manifest.json").is_file()
        assert " in 10 classes: digit_0, digit_1, … digit_9" in proc.stdout + proc.stderr
    (_, train), = done["train.py"]
    log = train.stdout + train.stderr
    total = int(re.search(r"steps 1\.\.\d+ of (\d+)", log).group(1))
    assert tag == f"step{total:08d}", f"README's eval line names {tag}, the run's last step is {total}"
    run = here / "runs" / "first"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / f"step{STEPS:08d}" / "COMPLETE").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS and list((run / "logs").iterdir())
    assert not [line for line in log.splitlines() if any(noise in line for noise in NOISE)], log[:2000]
    (_, probes), = done["eval.py"]
    assert re.search(r"^checkpoint\s+\d+\.\d%", probes.stdout, re.M), probes.stdout
    assert re.search(r"^random init\s+\d+\.\d%", probes.stdout, re.M), probes.stdout
    assert (run / "export" / "export.json").is_file() and (run / "export" / "timm" / "model.safetensors").is_file()
    page = (run / "report" / "index.html").read_text()
    assert (run / "report" / "masks.png").is_file() and "<tr><th>checkpoint</th>" in page  # eval.py's probe.json
