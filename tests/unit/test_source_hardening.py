"""shard_dataset.py against hostile inputs, one by one, in this process: bad SRC and DEST paths (one clear `error:`
line, never a traceback), a source file replaced by other content of the same size (its shard rebuilt on a rerun),
JPEGs damaged inside their scan data (reported as damaged, good JPEGs of every kind still copied), and reasons that
name the real problem (decompression bomb, symlink loop, dangling symlink). The image factories:
tests/image_factories.py; every hostile input at once through the real CLI: e2e/test_shard_dataset_cli.py.

The tests run as root, where chmod 000 still reads: unreadable files are stood for by dangling symlinks.
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from image_factories import encode, garbage_mid_scan, photo, png_header_only, scan_end, stray_markers, with_frame_size
from PIL import Image

import shard_dataset
from pipeline import DataError
from pipeline.shards.images import BadInput, prepare_jpeg
from pipeline.shards.manifest import read_manifest
from pipeline.shards.scan import scan_source
from pipeline.shards.writer import RunSettings, ShardOptions, build_shards


# ------------------------------------------------------------------------------------------------ damaged JPEGs
def test_garbage_mid_scan_and_stray_markers_are_reported_as_damaged():
    jpeg = encode(photo(), quality=90)
    damaged = {f"garbage with markers, seed {s}": garbage_mid_scan(jpeg, s, True) for s in range(3)}
    damaged |= {f"garbage without 0xFF, seed {s}": garbage_mid_scan(jpeg, s, False) for s in range(3)}
    damaged["stray markers"] = stray_markers(jpeg)
    end = scan_end(jpeg)
    cut = next(k for k in range(end - 300, 0, -1) if jpeg[k - 1] != 0xFF)  # not inside a stuffed 0xFF00
    damaged["cut, then an end marker appended (premature end of data segment)"] = jpeg[:cut] + b"\xff\xd9"
    damaged["bytes after the last block (extraneous bytes)"] = jpeg[:end] + bytes(40) + jpeg[end:]
    with_restarts = encode(photo(), restart_marker_blocks=2)
    rst3 = with_restarts.index(b"\xff\xd3", with_restarts.index(b"\xff\xda"))
    damaged["restart markers out of sequence"] = with_restarts[:rst3 + 1] + b"\xd5" + with_restarts[rst3 + 2:]
    for name, data in damaged.items():
        with pytest.raises(BadInput, match="corrupt JPEG data") as caught:
            prepare_jpeg(data, verify="full")
        assert "scan data" in caught.value.reason, (name, caught.value.reason)
    with pytest.raises(BadInput, match="stray marker 0xFF3A"):  # the marker structure: even --verify header
        prepare_jpeg(damaged["stray markers"], verify="header")
    with pytest.raises(BadInput, match=r"restart marker RST5 in the scan data at byte \d+, RST3 expected"):
        prepare_jpeg(damaged["restart markers out of sequence"], verify="header")
    for seed in range(3):
        with pytest.raises(BadInput, match="corrupt JPEG data"):
            prepare_jpeg(damaged[f"garbage with markers, seed {seed}"], verify="header")


GOOD_JPEG_KINDS = {
    "baseline": {}, "progressive": {"progressive": True}, "optimized": {"optimize": True},
    "4:4:4": {"subsampling": 0}, "restart every 3 blocks": {"restart_marker_blocks": 3},
    "restart every row": {"restart_marker_rows": 1}, "progressive with restarts": {"progressive": True,
                                                                                  "restart_marker_blocks": 2},
    "quality 100": {"quality": 100}, "quality 5": {"quality": 5},
}


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (96, 128), (61, 203)])
def test_good_jpegs_of_every_kind_are_copied_under_both_verify_modes(mode, size):
    for name, kw in GOOD_JPEG_KINDS.items():
        data = encode(photo(*size, seed=size[1]), mode=mode, **kw)
        for verify in ("full", "header"):
            assert prepare_jpeg(data, verify=verify) == (data, False, None), (name, verify)
    exif = Image.Exif()
    exif[0x010E] = "a description"
    with_exif = encode(photo(), exif=exif.tobytes())
    trailing = encode(photo()) + b"trailing bytes after the end-of-image marker"
    mpo = io.BytesIO()
    Image.fromarray(photo()).save(mpo, "MPO", save_all=True, append_images=[Image.fromarray(photo(seed=1))])
    for data in (with_exif, trailing, mpo.getvalue()):
        assert prepare_jpeg(data, verify="full") == (data, False, None)


# ------------------------------------------------------------------------------------------------ reasons
def test_reasons_name_the_real_problem(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "ok.jpg").write_bytes(encode(photo()))
    (src / "a" / "loop1.jpg").symlink_to("loop2.jpg")
    (src / "a" / "loop2.jpg").symlink_to("loop1.jpg")
    (src / "a" / "loopdir").symlink_to("loopdir")
    (src / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    scan = scan_source(src, "folders")
    skipped = {e["path"]: e["reason"] for e in scan.skipped}
    ignored = {e["path"]: e["reason"] for e in scan.ignored}
    assert skipped["a/loop1.jpg"].startswith("symlink loop") and skipped["a/loop2.jpg"].startswith("symlink loop")
    assert ignored["a/loopdir"].startswith("symlink loop")
    assert skipped["a/gone.jpg"] == f"dangling symlink: its target {str(tmp_path / 'nowhere.jpg')!r} does not exist"
    for bomb, pixels in ((with_frame_size(encode(photo()), 60000, 60000), "3,600,000,000"),
                         (png_header_only(50000, 50000), "2,500,000,000")):
        with pytest.raises(BadInput, match=f"decompression bomb: {pixels} pixels, over the limit of 178,956,970"):
            prepare_jpeg(bomb)


def test_a_broken_symlink_among_the_class_folders_is_an_error(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_bytes(encode(photo()))
    (tmp_path / "src" / "b").symlink_to(tmp_path / "moved_away")
    with pytest.raises(DataError, match="dangling symlink.*class index"):
        scan_source(tmp_path / "src", "folders")


# ------------------------------------------------------------------------------------------------ paths
def run_main(capsys, *argv) -> tuple[int, list[str]]:
    """shard_dataset.main in this process: (exit status, non-empty stderr lines)."""
    status = shard_dataset.main([*map(str, argv), "--no-progress", "--workers", "1"])
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_dest_that_is_a_file_or_under_a_file_is_one_clear_line(tmp_path, capsys):
    """Refused before any work: shard_dataset.py's main() in this process (an uncaught exception fails the test);
    the hostile-input test below runs the real CLI."""
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_bytes(encode(photo()))
    (tmp_path / "file").write_text("not a folder")
    expected = {tmp_path / "file": "it is a file", tmp_path / "file" / "shards": f"{tmp_path / 'file'} is a file"}
    for dest, what in expected.items():
        status, lines = run_main(capsys, tmp_path / "src", dest)
        assert status == 1 and lines == [f"error: DEST {dest}: {what}, not a folder; DEST must be a folder (it is "
                                         f"created if missing)"], lines
    assert (tmp_path / "file").read_text() == "not a folder"


def test_bad_src_and_dest_paths_are_one_clear_line(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.jpg").write_bytes(encode(photo()))
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = {  # (SRC, DEST): a fragment of the one error line
        (tmp_path / "missing", tmp_path / "o"): "no such folder", (tmp_path / "file", tmp_path / "o"): "is a file",
        (tmp_path / "empty", tmp_path / "o"): "no usable image files", (tmp_path / "loop", tmp_path / "o"):
        "symlink loop", (tmp_path / "dangling", tmp_path / "o"): "dangling symlink", (src, src): "must not be SRC",
        (src, src / "a" / "out"): "must not be SRC or inside it", (src, tmp_path / "loop"): "symlink loop",
        (src, tmp_path / "dangling"): "dangling symlink", (src, tmp_path / "loop" / "x"): "is a symlink loop",
    }
    if Path("/sys/kernel").is_dir():  # sysfs: no file or folder can be created there, not even by root
        cases[(src, Path("/sys/kernel"))] = "cannot write DEST /sys/kernel"
        cases[(src, Path("/sys/ijepa-test/shards"))] = "cannot write DEST /sys/ijepa-test/shards"
    for (s, d), fragment in cases.items():
        status, lines = run_main(capsys, s, d)
        assert status == 1 and len(lines) == 1, (s, d, lines)
        assert lines[0].startswith("error: ") and fragment in lines[0], (s, d, lines)
    assert not (tmp_path / "o").exists() and sorted(p.name for p in (src / "a").iterdir()) == ["x.jpg"]


# ------------------------------------------------------------------------------------------------ changed sources
def test_a_source_replaced_by_same_size_content_rebuilds_exactly_its_shard(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "shards"
    (src / "a").mkdir(parents=True)
    for i in range(6):  # uncompressed PNGs: other pixels, same file size
        (src / "a" / f"{i}.png").write_bytes(encode(photo(24, 32, seed=i), "PNG", compress_level=0))
    options, settings = ShardOptions(shard_samples=2, shard_bytes=None), RunSettings(workers=1, progress=False)
    build_shards(src, dest, options, settings)
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.suffix == ".tar"}
    victim = src / "a" / "3.png"
    stat = victim.stat()
    victim.write_bytes(encode(photo(24, 32, seed=99), "PNG", compress_level=0))
    assert victim.stat().st_size == stat.st_size
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later write, whatever the clock's grain
    manifest, counts = build_shards(src, dest, options, settings)
    assert counts["written"] == 1 and counts["kept"] == 2
    after = {p.name: p.read_bytes() for p in dest.iterdir() if p.suffix == ".tar"}
    changed = [name for name in after if after[name] != before[name]]
    assert len(changed) == 1
    shutil.copytree(src, tmp_path / "fresh_src", symlinks=True)
    build_shards(tmp_path / "fresh_src", tmp_path / "fresh", options, settings)
    assert after == {p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir() if p.suffix == ".tar"}
    read_manifest(dest, check="checksum")
