"""Checkpoint integrity (training/integrity.py, training/checkpoints.py): the COMPLETE marker records every file's
size and sha256; a resume checks them before loading. A checkpoint damaged in place (256 bytes overwritten, size
unchanged) is skipped by `--resume auto` (the newest one that verifies is taken, the damage logged naming the file)
and refused by `--resume PATH` in one line naming the file; when none verifies the resume is refused rather than
started fresh; a marker that is not the one train.py writes is damage like any other. Nothing damaged is ever
deleted. Unit tests on fake tag folders; train.py's main on a damaged copy of the session's trained checkpoint:
e2e/test_train_hardening.py."""
import hashlib
import json
import logging
import os

import pytest
from checkpoint_files import damage

from model.safe_load import CheckpointError
from training import checkpoints, integrity
from training.checkpoints import choose_checkpoint, keep_replaced, prune
from training.integrity import COMPLETE, mark_complete

SIZES = {"mp_rank_00_model_states.pt": 300_000, "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 200_000,
         "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 200_000, "zero/nested_states.pt": 5_000, "run.json": 40}


@pytest.fixture(autouse=True)
def rank0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)  # the plan's warnings are rank 0's


def make_tag(out_dir, step: int):
    """A fake tag folder of `out_dir` with DeepSpeed-like files of random bytes, marked complete as a save does."""
    folder = checkpoints.checkpoint_dir(out_dir) / checkpoints.tag_for(step)
    for name, size in SIZES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(os.urandom(size))
    mark_complete(folder, step)
    return folder


def test_the_marker_records_the_size_and_sha256_of_every_file_the_save_wrote(tmp_path):
    folder = make_tag(tmp_path, 4)
    (folder / ".run.json.123.partial").write_bytes(b"x")  # a write's temporary file is not the save's
    marker = json.loads((folder / COMPLETE).read_text())
    assert marker["step"] == 4 and sorted(marker["files"]) == sorted(SIZES)
    for name, entry in marker["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert choose_checkpoint(str(folder), tmp_path) == folder


def test_auto_falls_back_past_a_damaged_newest_checkpoint_naming_the_file(tmp_path, caplog):
    good, bad = make_tag(tmp_path, 2), make_tag(tmp_path, 4)
    victim = bad / "mp_rank_00_model_states.pt"
    damaged = damage(victim)
    with caplog.at_level(logging.INFO):
        assert choose_checkpoint("auto", tmp_path) == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert f"checkpoint {bad} is damaged" in warnings[0] and f"{victim}: its sha256 differs" in warnings[0]
    assert f"resuming from {good}, the newest checkpoint that verifies" in warnings[1]
    assert any("sha256 of 5 files" in r.getMessage() and " s with " in r.getMessage() for r in caplog.records)
    assert victim.read_bytes() == damaged and (bad / COMPLETE).is_file()  # the damaged one is kept as it is


def test_an_explicit_damaged_checkpoint_is_refused_in_one_line_naming_the_file(tmp_path):
    folder = make_tag(tmp_path, 4)
    victim = folder / "zero" / "nested_states.pt"
    damage(victim, offset=0)
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(str(folder), tmp_path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"checkpoint {folder} is damaged: {victim}: its sha256 differs")
    assert "--resume auto" in line
    assert victim.exists()


def test_sizes_are_checked_first_and_nothing_is_hashed_when_one_differs(tmp_path, monkeypatch):
    folder = make_tag(tmp_path, 4)
    monkeypatch.setattr(integrity, "files_sha256", lambda *a: pytest.fail("hashed although a size differs"))
    with open(folder / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "ab") as f:
        f.write(b"\0")
    (folder / "run.json").unlink()
    (folder / "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt").write_bytes(b"planted")
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(str(folder), tmp_path)
    line = str(err.value)
    assert f"{folder / 'run.json'}: missing" in line
    assert f"{folder / 'bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt'}: a file its save did not write" in line
    assert f"{folder / 'bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt'}: 200,001 bytes, its save wrote 200,000" in line


def test_a_marker_of_another_format_is_damage_named_in_one_line(tmp_path):
    """Only the marker train.py writes now counts: "<step>\\n", as checkpoints once had, is refused like damage."""
    folder = make_tag(tmp_path, 4)
    (folder / COMPLETE).write_text("4\n")
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(str(folder), tmp_path)
    assert str(err.value).startswith(f"checkpoint {folder} is damaged: {folder / COMPLETE}: unreadable (not a marker "
                                     f"train.py writes")


def test_when_no_checkpoint_verifies_auto_refuses_instead_of_starting_fresh(tmp_path):
    first, second = make_tag(tmp_path, 2), make_tag(tmp_path, 4)
    damage(first / "run.json", offset=0)
    (second / COMPLETE).write_text('{"step": 4, "files": {"run.json": {"bytes": "many"}}}')  # a damaged marker
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint("auto", tmp_path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"no checkpoint in {first.parent} verifies: ")
    assert f"step00000004 ({second / COMPLETE}: unreadable" in line
    assert f"step00000002 ({first / 'run.json'}: its sha256 differs" in line
    assert "start afresh in another run.out_dir, or move them away first" in line
    assert sorted(p.name for p in first.parent.iterdir()) == ["step00000002", "step00000004"]  # both kept


def test_prune_keeps_the_run_s_newest_and_never_a_newer_leftover_in_their_place(tmp_path):
    """After --resume auto went back past a damaged step 10 to step 2, the run saves step 4 (keep_last 1): step 2
    goes, the new step 4 stays; step 10, from the earlier course of the run, is left as it is."""
    for step in (2, 4, 10):
        make_tag(tmp_path, step)
    ckpt_dir = checkpoints.checkpoint_dir(tmp_path)
    assert prune(ckpt_dir, 1, "step00000004") == ["step00000002"]
    assert checkpoints.complete_tags(ckpt_dir) == ["step00000004", "step00000010"]


def test_a_save_at_the_step_of_an_existing_checkpoint_sets_it_aside(tmp_path):
    folder = make_tag(tmp_path, 4)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    kept = keep_replaced(folder)
    assert not folder.exists() and kept.name.startswith("step00000004.replaced-")
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before
    assert checkpoints.complete_tags(folder.parent) == [] and keep_replaced(folder) is None


def test_a_run_folder_given_as_the_checkpoint_is_named_with_its_newest_checkpoint(tmp_path):
    """--resume runs/my (the run folder) or runs/my/checkpoints: what it is, and the tag folder to give instead."""
    run = tmp_path / "my"
    make_tag(run, 6)
    newest = make_tag(run, 12)
    for given, what in ((run, "a run folder"), (run / "checkpoints", "a run's checkpoints folder")):
        with pytest.raises(CheckpointError) as err:
            choose_checkpoint(str(given), tmp_path / "elsewhere")
        assert str(err.value).startswith(f"{given} is {what}, not a checkpoint: give one of its 2 checkpoint(s), e.g. "
                                         f"the newest: --resume {newest}")
    (newest / COMPLETE).unlink()  # a save that died is still called what it is
    with pytest.raises(CheckpointError, match="is incomplete .no COMPLETE marker: its run died while saving"):
        choose_checkpoint(str(newest), run)


def test_resume_auto_that_finds_nothing_names_the_folder_it_searched(tmp_path, caplog):
    """A mistyped run.out_dir with --resume auto starts fresh, saying where it looked and that nothing was there."""
    caplog.set_level(logging.INFO, logger="training.checkpoints")
    assert choose_checkpoint("auto", tmp_path / "my-typo") is None
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert choose_checkpoint("auto", tmp_path / "empty") is None
    assert caplog.messages == [
        f"--resume auto: no complete checkpoint in {tmp_path / 'my-typo' / 'checkpoints'} (no such folder): starting "
        f"fresh", f"--resume auto: no complete checkpoint in {tmp_path / 'empty' / 'checkpoints'} (it holds none): "
                  f"starting fresh"]


def test_a_line_that_stops_a_run_advises_a_resume_only_when_there_is_a_checkpoint(tmp_path):
    from training.guard import restart_line

    assert restart_line(tmp_path) == "no complete checkpoint yet: run the same command again to start over"
    newest = make_tag(tmp_path, 20)
    assert restart_line(tmp_path) == f"last complete checkpoint {newest}; resume with --resume auto"
