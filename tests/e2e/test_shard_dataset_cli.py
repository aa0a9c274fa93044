"""shard_dataset.py end to end: the real CLI on a generated ImageNet-like folder holding every oddity
(tests/image_factories.py), read back with webdataset and DALI (CPU), reproducibility, SIGKILL + resume, a damaged
shard rebuilt by a rerun; and a tree of hostile inputs of every kind through the CLI, each skipped with an accurate
reason. (shard_dataset.py's main() in this process: unit/test_shard_dataset.py; the hostile inputs one by one:
unit/test_source_hardening.py.)

Unreadable input: the tests run as root, where chmod 000 still reads, so the unreadable file is a dangling symlink
named .jpg (open fails with ENOENT, reported as a dangling symlink); a FIFO named .jpg stands for "not a regular
file".
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from image_factories import CLASSES, encode, garbage_mid_scan, photo, png_header_only, stray_markers, with_frame_size
from PIL import Image
from shard_runs import read_members, shard_files

from pipeline.shards.format import ManifestError
from pipeline.shards.manifest import MANIFEST_NAME, list_shards, read_manifest
from util.files import is_partial_name

ROOT = Path(__file__).resolve().parents[2]


def run_cli(src, dest, *flags, env=None, timeout=120):
    """Runs the real CLI; returns the CompletedProcess (text output)."""
    cmd = [sys.executable, str(ROOT / "shard_dataset.py"), str(src), str(dest), "--no-progress", *map(str, flags)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def tree_digest(root: Path) -> str:
    """Names, sizes, mtimes and bytes of every regular file under root (FIFOs and dangling links by name only)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_fifo():
            st = path.stat()
            h.update(f"{st.st_size} {st.st_mtime_ns}".encode() + path.read_bytes())
    return h.hexdigest()


def recorded_shards(dest: Path) -> int:
    """Shards the manifest of a running shard_dataset.py records as done (0 before it exists)."""
    if not (dest / MANIFEST_NAME).exists():
        return 0
    return len(read_manifest(dest, check="none", allow_incomplete=True).shards)


def live_processes_in_group(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    alive = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat_path.parent.name))
    return alive


@pytest.fixture(scope="module")
def reference(imagenet, tmp_path_factory):
    """One uninterrupted run of the real CLI with 4-sample shards, 2 workers: (dest, CompletedProcess, the digest of
    SRC taken just before it)."""
    src, _, _ = imagenet
    dest = tmp_path_factory.mktemp("ref") / "shards"
    before = tree_digest(src)
    proc = run_cli(src, dest, "--shard-size", 4, "--workers", 2, "--json", "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    return dest, proc, before


def test_every_good_image_once_with_its_label_and_every_bad_one_listed(imagenet, reference):
    src, good, bad = imagenet
    dest, proc, _ = reference
    manifest = read_manifest(dest, check="checksum")
    assert manifest.status == "complete" and manifest.classes == CLASSES
    seen = {}
    for shard in list_shards(dest, manifest):
        samples = read_members(shard.path)
        assert len(samples) == shard.samples
        for key, sample in samples.items():
            meta = json.loads(sample["json"])
            assert meta["path"] not in seen, f"{meta['path']} written twice"
            seen[meta["path"]] = sample
            label, copied = good[meta["path"]]
            assert int(sample["cls"].decode("ascii")) == label == meta["label"]
            assert meta["class"] == CLASSES[label]
            source = (src / meta["path"]).read_bytes()
            if copied:
                assert sample["jpg"] == source, f"{meta['path']}: copied JPEG bytes differ from the source"
            else:
                img = Image.open(io.BytesIO(sample["jpg"]))
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == Image.open(src / meta["path"]).size
    assert set(seen) == set(good)
    assert manifest.total_samples == len(good) == sum(r.samples for r in manifest.shards)
    assert sum(r.converted for r in manifest.shards) == sum(not copied for _, copied in good.values())
    skipped = {entry["path"]: entry["reason"] for entry in manifest.skipped}
    assert set(skipped) == set(bad)
    for path, fragment in bad.items():
        assert fragment in skipped[path].lower(), (path, skipped[path])
    assert {e["path"] for e in manifest.ignored} == {"README.txt", f"{CLASSES[2]}/notes.txt"}
    assert f"skipped {len(bad)} bad input(s)" in proc.stderr and f"{len(good)} samples" in proc.stderr


def test_src_is_never_modified(imagenet, reference):
    """By the reference run of the real CLI (its digest of SRC taken just before it ran)."""
    src, _, _ = imagenet
    _, _, before = reference
    assert tree_digest(src) == before


def test_index_files_are_what_dali_wds2idx_writes(reference, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships in the DALI wheel
    dest, _, _ = reference
    for shard in list_shards(dest):
        with wds2idx.IndexCreator(str(shard.path), str(tmp_path / "ref.idx"), verbose=False) as creator:
            creator.create_index()
        assert shard.index_path.read_bytes() == (tmp_path / "ref.idx").read_bytes(), shard.index_path


def test_read_back_with_webdataset(imagenet, reference):
    import webdataset as wds

    _, good, _ = imagenet
    dest, _, _ = reference
    urls = [str(s.path) for s in list_shards(dest)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == len(good)
    assert all(isinstance(s["jpg"], Image.Image) and s["jpg"].mode == "RGB" for s in samples)
    assert sorted(s["cls"] for s in samples) == sorted(label for label, _ in good.values())


def test_read_back_with_dali_cpu_using_the_index_files(imagenet, reference, capfd):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    _, good, _ = imagenet
    dest, _, _ = reference
    shards = list_shards(dest)

    @dali.pipeline_def
    def read(paths, index_paths):
        jpg, cls = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["jpg", "cls"], name="Reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), fn.pad(cls, fill_value=32)

    pipe = read([str(s.path) for s in shards], [str(s.index_path) for s in shards], batch_size=len(good),
                num_threads=1, device_id=None)
    pipe.build()
    assert pipe.epoch_size("Reader") == len(good)
    images, labels = pipe.run()  # one batch = the whole epoch
    assert len(images) == len(good) and all(np.asarray(images[i]).shape[2] == 3 for i in range(len(good)))
    decoded = sorted(int(bytes(np.asarray(labels[i])).decode("ascii").strip()) for i in range(len(good)))
    assert decoded == sorted(label for label, _ in good.values())
    assert "Index file not provided" not in "".join(capfd.readouterr())


def test_same_seed_gives_byte_identical_shards_whatever_the_worker_count(imagenet, reference, tmp_path, run_main):
    src, _, _ = imagenet
    dest, _, _ = reference
    assert run_main(src, tmp_path / "again", "--shard-size", 4, "--workers", 1, "--json", "--seed", 3).returncode == 0
    assert shard_files(tmp_path / "again") == shard_files(dest)
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (dest / "manifest.json").read_bytes()
    assert run_main(src, tmp_path / "other", "--shard-size", 4, "--workers", 2, "--json", "--seed", 4).returncode == 0
    assert shard_files(tmp_path / "other") != shard_files(dest)


# The CLI's main() with the writer slowed by 50 ms an input (its read of each source file, in the forked workers too),
# so that a run can be killed part way: tens of inputs take seconds instead of milliseconds.
SLOW_WRITER_CLI = textwrap.dedent("""
    import sys, time
    import shard_dataset
    from pipeline.shards import writer as shard_writer

    read_source = shard_writer.read_source

    def slow_read_source(path):
        time.sleep(0.05)
        return read_source(path)

    shard_writer.read_source = slow_read_source
    sys.exit(shard_dataset.main(sys.argv[1:]))
""")


def test_run_killed_with_sigkill_then_rerun_gives_the_uninterrupted_shards(imagenet, reference, tmp_path, run_main):
    src, _, _ = imagenet
    dest, _, _ = reference
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-c", SLOW_WRITER_CLI, str(src), str(killed), "--no-progress", "--shard-size", "4",
           "--workers", "2", "--json", "--seed", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not recorded_shards(killed) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while live_processes_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not live_processes_in_group(proc.pid), "pool workers outlived the killed main process"
    finally:
        if live_processes_in_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    partial = read_manifest(killed, check="none", allow_incomplete=True)
    assert partial.status == "in_progress" and len(partial.shards) < partial.planned_shards, "the run was not cut"
    with pytest.raises(ManifestError, match="has not finished"):
        read_manifest(killed)
    rerun = run_main(src, killed, "--shard-size", 4, "--workers", 2, "--json", "--seed", 3)  # the resume, in process
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stderr and " 0 kept" not in rerun.stderr
    assert shard_files(killed) == shard_files(dest)
    assert not [p for p in killed.iterdir() if is_partial_name(p.name)]
    read_manifest(killed, check="checksum")


def test_rerun_keeps_valid_shards_and_rebuilds_a_damaged_one(imagenet, tmp_path, run_main):
    src, _, _ = imagenet
    dest = tmp_path / "shards"
    assert run_main(src, dest, "--shard-size", 8, "--workers", 1).returncode == 0
    expected = shard_files(dest)
    victim = list_shards(dest)[1].path
    damaged = bytearray(victim.read_bytes())
    damaged[700] ^= 0xFF  # same size: only the checksum can tell
    victim.write_bytes(bytes(damaged))
    with pytest.raises(ManifestError, match=victim.name):
        read_manifest(dest, check="checksum")
    (dest / list_shards(dest)[2].index_path.name).unlink()
    rerun = run_cli(src, dest, "--shard-size", 8, "--workers", 1)  # the real CLI: a worker names the rebuilt shard
    assert rerun.returncode == 0, rerun.stderr
    assert "2 written now" in rerun.stderr and victim.name in rerun.stderr
    assert shard_files(dest) == expected


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
