"""shard_dataset.py against hostile inputs: bad SRC and DEST paths (one clear `error:` line, never a traceback), a
source file replaced by other content of the same size (its shard rebuilt on a rerun), JPEGs damaged inside their
scan data (reported as damaged, good JPEGs of every kind still copied), and reasons that name the real problem
(decompression bomb, symlink loop, dangling symlink).

The tests run as root, where chmod 000 still reads: unreadable files are stood for by dangling symlinks.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import shard_dataset
from pipeline import DataError
from pipeline.shards.images import BadInput, prepare_jpeg
from pipeline.shards.manifest import list_shards, read_manifest
from pipeline.shards.scan import scan_source
#FMT
from pipeline.shards.writer import RunSettings, ShardOptions, build_shards

ROOT = Path(__file__).resolve().parent.parent


def photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth image with noise: JPEG scan data like a photo's (long runs of short Huffman codes)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 9), 128 + 100 * np.cos(y / 7), (x + y) % 256], -1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt_name: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt_name, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb when large); its data holds a few rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` whose start-of-frame header claims another size."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def scan_end(jpeg: bytes) -> int:
    """Where the scan data of a baseline JPEG written by PIL ends: at its end-of-image marker."""
    assert jpeg.endswith(b"\xff\xd9")
    return len(jpeg) - 2


# ------------------------------------------------------------------------------------------------ damaged JPEGs
def garbage_mid_scan(jpeg: bytes, seed: int, with_markers: bool) -> bytes:
    """64 random bytes written over the data at 60% of the file (same size); `with_markers`: some are 0xFF, so they
    read as markers."""
    rng = np.random.default_rng(seed)
    data, at = bytearray(jpeg), int(len(jpeg) * 0.6)
    garbage = rng.integers(0, 255, 64, dtype=np.uint8)  # 0..254: no 0xFF
    if with_markers:
        garbage[::9] = 0xFF
    assert scan_end(jpeg) > at + 64 > at > jpeg.find(b"\xff\xda")  # inside the scan data
    data[at:at + 64] = garbage.tobytes()
    return bytes(data)


def stray_markers(jpeg: bytes) -> bytes:
    """Stuffed 0xFF00 bytes in the scan data turned into 0xFF xx markers that may not appear there."""
    data, start = bytearray(jpeg), jpeg.find(b"\xff\xda")
    stuffed = [i for i in range(start + 2, scan_end(jpeg)) if data[i] == 0xFF and data[i + 1] == 0]
    assert len(stuffed) >= 3
    for i, code in zip(stuffed[len(stuffed) // 2:], (0x3A, 0xC0, 0x01)):
        data[i + 1] = code
    return bytes(data)


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


# ------------------------------------------------------------------------------------------------ everything at once
def make_hostile_tree(src: Path) -> tuple[set[str], dict[str, str]]:
    """A class-folder tree holding good images of every kind and bad inputs of every kind; returns (good paths,
    bad path → fragment of its reason)."""
    good, bad = set(), {}

    def put(rel: str, data: bytes, reason: str | None = None) -> None:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        if reason is None:
            good.add(rel)
        else:
            bad[rel] = reason

    jpeg = encode(photo())
    put("good/plain.jpg", jpeg)
    put("good/progressive.jpg", encode(photo(), progressive=True))
    put("good/restarts.jpg", encode(photo(), restart_marker_blocks=2))
    put("good/cmyk.jpg", encode(photo(), mode="CMYK"))
    put("good/png_named.jpg", encode(photo(), "PNG"))
    put("good/gif.gif.jpeg", encode(photo(), "GIF", mode="P"))
    put("good/deep.png", encode(np.full((8, 8), 40000, np.uint16), "PNG", mode="I;16"))
    put("good/new\nline.jpg", jpeg)
    put(os.fsdecode(b"good/not-utf8-\xff.jpg"), jpeg)
    put(os.fsdecode(b"odd\nclass \xfe/x.jpg"), jpeg)
    put("-dash/x.JPG", jpeg)
    put("bad/text.jpg", b"plain text\n", "not an image")
    put("bad/html.jpeg", b"<html>404</html>", "not an image")
    put("bad/eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "not an image")
    put("bad/zero.jpg", b"", "empty file")
    put("bad/cut_scan.jpg", jpeg[:len(jpeg) * 2 // 3], "truncated")
    put("bad/cut_header.jpg", jpeg[:150], "truncated")
    put("bad/cut.png", encode(photo(), "PNG")[:300], "truncated")
    put("bad/garbage.jpg", garbage_mid_scan(jpeg, 0, True), "corrupt JPEG data")
    put("bad/markers.jpg", stray_markers(jpeg), "stray marker")
    put("bad/bomb.jpg", with_frame_size(jpeg, 60000, 60000), "decompression bomb")
    put("bad/bomb.png", png_header_only(50000, 50000), "decompression bomb")
    put("bad/float.tif", encode(np.random.default_rng(0).random((8, 8), dtype=np.float32), "TIFF", mode="F"),
        "float samples")
    (src / "bad" / "loop1.jpg").symlink_to("loop2.jpg")
    (src / "bad" / "loop2.jpg").symlink_to("loop1.jpg")
    (src / "bad" / "dangling.jpg").symlink_to(src / "nowhere.jpg")
    (src / "bad" / "dev_zero.jpg").symlink_to("/dev/zero")
    (src / "bad" / "dir.jpg").mkdir()
    os.mkfifo(src / "bad" / "fifo.jpg")
    if len(str(src / "bad" / "socket.jpg")) < 100:  # the limit of a socket's path
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(src / "bad" / "socket.jpg"))
        bad["bad/socket.jpg"] = "not a regular file"
    with open(src / "bad" / "sparse.jpg", "wb") as f:
        f.truncate(2**31)  # 2 GiB of nothing: skipped by its size, never read
    bad.update({"bad/loop1.jpg": "symlink loop", "bad/loop2.jpg": "symlink loop", "bad/dangling.jpg": "dangling",
                "bad/dev_zero.jpg": "not a regular file", "bad/fifo.jpg": "not a regular file",
                "bad/sparse.jpg": "too large"})
    return good, bad


@pytest.mark.slow
def test_hostile_inputs_through_the_cli_are_skipped_with_accurate_reasons(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "shards"
    good, bad = make_hostile_tree(src)
    proc = subprocess.run([sys.executable, str(ROOT / "shard_dataset.py"), str(src), str(dest), "--no-progress",
                           "--shard-size", "4", "--workers", "2", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    manifest = read_manifest(dest, check="checksum")
    skipped = {e["path"]: e["reason"] for e in manifest.skipped}
    assert set(skipped) == set(bad), set(skipped) ^ set(bad)
    for path, fragment in bad.items():
        assert fragment.lower() in skipped[path].lower(), (path, skipped[path])
    written = []
    for shard in list_shards(dest, manifest):
        for sample in wds.WebDataset(str(shard.path), shardshuffle=False):
            written.append(json.loads(sample["json"])["path"])
            assert Image.open(io.BytesIO(sample["jpg"])).mode in ("RGB", "L")
    assert sorted(written) == sorted(good)
    assert manifest.classes == sorted(["good", "bad", "-dash", os.fsdecode(b"odd\nclass \xfe")])
