"""What a user reads cannot drift from what runs: README stays a short page without dates; every relative link in
README, docs/ and benchmarks/results.md reaches a file and, with an anchor, one of its headings; every train.py
command README and docs/cluster.md show parses and loads its config with its --set values. (The quick start itself
runs in e2e/test_quick_start.py; docs/config.md is the schema's: test_config_reference.py.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_short_page_without_dates():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert not re.findall(r"20\d\d-[01]\d-", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a URL, or mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def train_commands(page: Path) -> list[list[str]]:
    """The train.py commands of a page's code blocks (continued lines joined), without those holding placeholders."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    argvs = [shlex.split(line, comments=True) for line in lines if "train.py" in line and "..." not in line]
    return [argv[argv.index("train.py") + 1:] for argv in argvs if "train.py" in argv]


@pytest.mark.parametrize("page", ["README.md", "docs/cluster.md"])
def test_every_train_command_shown_parses_and_loads_its_config(page):
    import train

    commands = train_commands(ROOT / page)
    assert len(commands) >= 4, commands
    for argv in commands:
        args = train.parse_args(argv)
        cfg = load_config(ROOT / args.config, overrides=args.set)
        assert cfg.data.shards, argv
