"""docs/config.md is what config/reference.py writes from the schema: a key added without its docstring, or the page
not regenerated after a change, fails here with the command that fixes it."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from config.ranges import at_least, section
from config.reference import REGENERATE, render, section_table
from config.sections import Config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "config.md"


@section
class Documented:
    """A section whose keys say what they mean."""

    steps: int = at_least(1, default=10)
    """how many"""


@section
class Undocumented:
    """A section with a key that does not say what it means."""

    steps: int = at_least(1, default=10)


def test_the_page_is_what_the_generator_writes():
    assert PAGE.exists(), f"docs/config.md is missing: run `{REGENERATE}`"
    assert PAGE.read_text() == render(), (f"docs/config.md differs from what config/sections.py gives: run "
                                          f"`{REGENERATE}` and commit it")


def test_every_key_of_every_section_has_its_row():
    page = render()
    for spec in dataclasses.fields(Config):
        part = page.split(f"\n## {spec.name}\n", 1)[1].split("\n## ", 1)[0]
        if spec.name == "deepspeed":
            continue  # a pass-through mapping: its default and the keys it refuses, checked below
        for key in dataclasses.fields(spec.default_factory):
            assert re.search(rf"^\| `{key.name}` \| .+ \| `.*` \| .+ \|$", part, re.M), f"{spec.name}.{key.name}"
    assert "| `train_batch_size` | data.batch_size" in page


def test_a_key_without_a_docstring_is_refused_naming_it():
    assert "| `steps` | int: >= 1 | `10` | how many |" in section_table("toy", Documented)
    with pytest.raises(ValueError, match=r"toy\.steps has no docstring.*python -m config\.reference"):
        section_table("toy", Undocumented)


def test_the_page_has_no_dates_and_no_paths_of_this_machine():
    page = render()
    assert page == render()
    assert not re.search(r"20\d{2}-[01]\d-", page)
    assert str(ROOT) not in page and str(Path.home()) not in page
