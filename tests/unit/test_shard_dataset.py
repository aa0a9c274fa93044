"""shard_dataset.py's main() in this process on a generated ImageNet-like folder holding every oddity
(tests/image_factories.py): refusal of a foreign DEST, --strict, no good image, an unlabeled flat folder, --max-size,
the byte cap, the JPEG check from content, --shard-size in samples or bytes, the round balance. (The real CLI, read
back with webdataset and DALI (CPU), reproducibility, SIGKILL + resume: e2e/test_shard_dataset_cli.py;
unit/test_source_hardening.py tries the hostile inputs one by one.)

Unreadable input: the tests run as root, where chmod 000 still reads, so the unreadable file is a dangling symlink
named .jpg (open fails with ENOENT, reported as a dangling symlink); a FIFO named .jpg stands for "not a regular
file".
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from image_factories import encode, jpeg_bytes, make_imagenet_like
from PIL import Image
from shard_runs import read_members, shard_files

from pipeline.shards.format import tar_member_bytes
from pipeline.shards.images import prepare_jpeg
from pipeline.shards.manifest import list_shards, read_manifest
from pipeline.shards.scan import scan_source
from pipeline.shards.writer import ShardOptions, assign_shards
from util.files import is_partial_name


def test_foreign_dest_is_refused_unless_overwrite(imagenet, tmp_path, run_main):
    src, _, _ = imagenet
    dest = tmp_path / "shards"
    assert run_main(src, dest, "--shard-size", 8, "--workers", 1).returncode == 0
    before = shard_files(dest)
    refused = run_main(src, dest, "--shard-size", 8, "--workers", 1, "--seed", 1)
    assert refused.returncode == 1 and "refusing" in refused.stderr and "seed 0 → 1" in refused.stderr
    assert "--overwrite" in refused.stderr and shard_files(dest) == before
    other_src = tmp_path / "other"
    make_imagenet_like(other_src, per_class=2)
    refused = run_main(other_src, dest, "--shard-size", 8, "--workers", 1)
    assert refused.returncode == 1 and "holds shards of" in refused.stderr and shard_files(dest) == before
    (tmp_path / "not_ours").mkdir()
    (tmp_path / "not_ours" / "data-000000.tar").write_bytes(b"someone else's")
    refused = run_main(src, tmp_path / "not_ours", "--workers", 1)
    assert refused.returncode == 1 and "no manifest.json" in refused.stderr
    replaced = run_main(src, dest, "--shard-size", 8, "--workers", 1, "--seed", 1, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert shard_files(dest) != before and read_manifest(dest, check="checksum").options["seed"] == 1


def test_strict_makes_a_bad_input_an_error(imagenet, tmp_path, run_main):
    src, _, _ = imagenet
    proc = run_main(src, tmp_path / "a", "--strict", "--workers", 1)
    assert proc.returncode == 1 and "--strict" in proc.stderr and "error:" in proc.stderr
    only_truncated = tmp_path / "src"
    (only_truncated / "a").mkdir(parents=True)
    arr = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (only_truncated / "a" / "ok.jpg").write_bytes(jpeg_bytes(arr))
    (only_truncated / "a" / "cut.jpg").write_bytes(jpeg_bytes(arr)[:-400])
    proc = run_main(only_truncated, tmp_path / "b", "--strict", "--workers", 1)
    assert proc.returncode == 1 and "cut.jpg" in proc.stderr and "truncated" in proc.stderr
    assert not [p for p in (tmp_path / "b").iterdir() if is_partial_name(p.name)]
    assert run_main(only_truncated, tmp_path / "b", "--workers", 1).returncode == 0  # the same DEST, without --strict


def test_no_good_image_is_a_clear_error(tmp_path, run_main):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_text("text")
    proc = run_main(tmp_path / "src", tmp_path / "out", "--workers", 1)
    assert proc.returncode == 1 and "none of the 1 image files" in proc.stderr
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.jpg")
    proc = run_main(tmp_path / "flat", tmp_path / "out2", "--workers", 1)
    assert proc.returncode == 1 and "no usable image files" in proc.stderr and "--labels none" in proc.stderr


def test_unlabeled_flat_folder_header_check_and_max_size(tmp_path, run_main):
    src = tmp_path / "flat"
    src.mkdir()
    rng = np.random.default_rng(1)
    big = jpeg_bytes(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    small = jpeg_bytes(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (src / "big.jpg").write_bytes(big)
    (src / "small.jpg").write_bytes(small)
    (src / "cut.jpg").write_bytes(small[:-300])  # within --max-size: only the header check sees it
    proc = run_main(src, tmp_path / "out", "--labels", "none", "--verify", "header", "--max-size", 40, "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(tmp_path / "out")
    assert manifest.classes is None and manifest.total_samples == 2
    assert [e["path"] for e in manifest.skipped] == ["cut.jpg"] and "end-of-image" in manifest.skipped[0]["reason"]
    samples = read_members(list_shards(tmp_path / "out")[0].path)
    assert all(set(s) == {"jpg"} for s in samples.values())
    sizes = sorted(Image.open(io.BytesIO(s["jpg"])).size for s in samples.values())
    assert sizes == [(20, 30), (40, 30)]
    assert small in [s["jpg"] for s in samples.values()]  # within --max-size: copied, not re-encoded


def test_a_side_over_jpegs_limit_is_resized_to_fit_and_reported(tmp_path, run_main):
    """Valid PNGs wider than JPEG's 65,500 pixels: resized (aspect kept) and listed with that reason, not skipped as
    corrupt; one whose shorter side would drop under a pixel is skipped, saying why."""
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    wide = {"wide.png": (100_000, 1), "wide2.png": (70_000, 2), "tall.png": (1, 90_000), "thread.png": (200_000, 1)}
    for name, size in wide.items():
        Image.new("RGB", size, (200, 40, 10)).save(src / name)
    (src / "ok.jpg").write_bytes(jpeg_bytes(np.full((8, 8, 3), 90, np.uint8)))
    proc = run_main(tmp_path / "src", tmp_path / "out", "--workers", 1)
    assert proc.returncode == 0 and "corrupt" not in proc.stderr, proc.stderr
    limit = "JPEG allows at most 65,500 pixels per side"
    for line in ("resized 3 image(s) to fit JPEG's side limit", f"a/wide.png: resized from 100,000×1 to 65,500×1: "
                 f"{limit}", f"a/wide2.png: resized from 70,000×2 to 65,500×2: {limit}",
                 f"a/tall.png: resized from 1×90,000 to 1×65,500: {limit}"):
        assert line in proc.stderr, proc.stderr
    manifest = read_manifest(tmp_path / "out")
    assert [e["path"] for e in manifest.skipped] == ["a/thread.png"], manifest.skipped
    assert limit in manifest.skipped[0]["reason"] and "under 1 pixel" in manifest.skipped[0]["reason"]
    samples = read_members(list_shards(tmp_path / "out")[0].path)
    sizes = sorted(Image.open(io.BytesIO(s["jpg"])).size for s in samples.values())
    assert sizes == [(1, 65_500), (8, 8), (65_500, 1), (65_500, 2)]


def test_byte_cap_is_exact_for_copied_jpegs(imagenet):
    src, _, _ = imagenet
    scan = scan_source(src, "folders")
    copied = [f for f in scan.files if f.path.lower().endswith((".jpg", ".jpeg")) and "cmyk" not in f.path
              and "png_named" not in f.path]
    scan.files = copied
    options = ShardOptions(shard_bytes=6000, shard_samples=None)
    shards = assign_shards(scan, options)
    assert len(shards) > 2 and sum(len(s.members) for s in shards) == len(copied)
    for shard in shards:
        estimate = sum(tar_member_bytes(f.size) + tar_member_bytes(len(str(f.label))) for _, f in shard.members)
        assert estimate <= 6000 or len(shard.members) == 1


def test_prepare_jpeg_detects_the_format_from_content():
    arr = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    jpeg = jpeg_bytes(arr)
    assert prepare_jpeg(jpeg) == (jpeg, False, None)
    png_bytes, converted, note = prepare_jpeg(encode(arr, "PNG"))
    assert converted and note is None and Image.open(io.BytesIO(png_bytes)).format == "JPEG"
    cmyk, converted, _ = prepare_jpeg(jpeg_bytes(arr, "CMYK"))
    assert converted and Image.open(io.BytesIO(cmyk)).mode == "RGB"
    deep = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(deep, "PNG")  # 16-bit gray, mid level
    deep_bytes, _, _ = prepare_jpeg(deep.getvalue())
    assert abs(np.asarray(Image.open(io.BytesIO(deep_bytes))).mean() - 128) < 3  # scaled, not clipped to white


def test_folders_named_like_splits_are_a_warning_and_the_classes_are_named(tmp_path, run_main):
    """Issue 44: `shard_dataset.py mydata shards/x` on a folder of train/ and val/ made two classes, "train" and
    "val", without a word. The start line names the class count and classes (the first two and the last of many);
    top folders named like splits are a warning with the command for one split, also under --labels none (one set
    of both). A single class named "test" among others is no sign of splits."""
    jpeg = jpeg_bytes(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))

    def write(root, folders):
        for folder in folders:
            (root / folder).mkdir(parents=True)
            (root / folder / "a.jpg").write_bytes(jpeg)

    mydata = tmp_path / "mydata"
    write(mydata, ["train/cat", "train/dog", "val/cat", "val/dog"])
    proc = run_main(mydata, tmp_path / "shards" / "x", "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"{mydata}: 4 images in 2 classes: train, val" in lines, lines
    assert (f"warning: {mydata} holds class folders named like splits (train, val): shard each split on its own: "
            f"shard_dataset.py {mydata / 'train'} {tmp_path / 'shards' / 'x' / 'train'}") in lines, lines
    proc = run_main(mydata, tmp_path / "flat", "--labels", "none", "--workers", 1)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 0 and f"{mydata}: 4 images in no classes (--labels none)" in lines, lines
    assert (f"warning: {mydata} holds folders named like splits (train, val), whose images --labels none puts in one "
            f"set: shard each split on its own: shard_dataset.py {mydata / 'train'} {tmp_path / 'flat' / 'train'} "
            f"--labels none") in lines, lines
    write(tmp_path / "many", [f"n{i:08d}" for i in range(11)] + ["test"])
    proc = run_main(tmp_path / "many", tmp_path / "m", "--workers", 1)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert f"{tmp_path / 'many'}: 12 images in 12 classes: n00000000, n00000001, … test" in proc.stderr.splitlines()
    write(tmp_path / "one", ["train/cat"])
    assert "holds class folders named like splits (train)" in run_main(tmp_path / "one", tmp_path / "o").stderr


def test_upload_to_an_unknown_scheme_is_refused_naming_the_schemes(capsys):
    """A typo in --upload's scheme is refused as the arguments are read, before any shard is written."""
    import shard_dataset

    with pytest.raises(SystemExit) as exit_:
        shard_dataset.parse_args(["src", "dest", "--upload", "htps://host/x/"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(  # after the program's name, which pytest sets
        ": error: argument --upload: htps://host/x/ has the scheme 'htps', which is not one this reads: use http://, "
        "https:// or s3://")


def test_shard_size_flag_takes_samples_bytes_or_both():
    import argparse

    from shard_dataset import parse_shard_size

    assert parse_shard_size("10000") == (10000, None)
    assert parse_shard_size("1GB") == (None, 10**9)
    assert parse_shard_size("5000, 512MiB") == (5000, 512 * 2**20)
    for bad in ("1.5", "10XB", "0", "", "1GB;2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard_size(bad)


def test_round_balance_warns_when_the_last_round_of_shards_leaves_workers_idle():
    from pipeline.shards.writer import round_balance

    imagenet = [(9_100, 10**9)] * 141  # ImageNet train at the default 1 GB shards
    assert round_balance(imagenet, 16) is None  # 9 rounds, 98% used
    warning = round_balance(imagenet, 64)
    assert "3 round(s), the last with 13 shard(s)" in warning and "73%" in warning
    assert "--shard-size 735MB would make about 192 shards" in warning
    assert "--shard-size 25 would make about 4 shards" in round_balance([(33, 10**5)] * 3, 2)  # small: in samples
    assert round_balance([(33, 10**5)] * 3, 1) is None
