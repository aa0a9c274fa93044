"""shard_dataset.py end to end: the real CLI on a generated ImageNet-like folder holding every oddity, read back with
webdataset and DALI (CPU), reproducibility, SIGKILL + resume, refusal of a foreign DEST, --strict, --max-size.

Unreadable input: the tests run as root, where chmod 000 still reads, so the unreadable file is a dangling symlink
named .jpg (open fails with ENOENT, reported as a dangling symlink); a FIFO named .jpg stands for "not a regular
file". tests/test_source_hardening.py tries the hostile inputs one by one.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shard_dataset
from pipeline.shards.format import ManifestError, tar_member_bytes
from pipeline.shards.images import prepare_jpeg
from pipeline.shards.manifest import MANIFEST_NAME, list_shards, read_manifest
from pipeline.shards.scan import scan_source
from pipeline.shards.writer import ShardOptions, assign_shards
from util.files import is_partial_name

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["n01440764", "n01443537", "n01484850"]


def run_cli(src, dest, *flags, env=None, timeout=120):
    """Runs the real CLI; returns the CompletedProcess (text output)."""
    cmd = [sys.executable, str(ROOT / "shard_dataset.py"), str(src), str(dest), "--no-progress", *map(str, flags)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def run_main(capsys, caplog):
    """shard_dataset.py's main() in this process, called like run_cli: a CompletedProcess whose stderr holds what
    main() printed (its `error:` line) and the log lines of this process (the summary, the refusals). The log lines
    of the forked workers (which shard is rebuilt, and why) reach only a real CLI's stderr: run_cli for those."""
    def run(src, dest, *flags) -> subprocess.CompletedProcess:
        argv = [str(src), str(dest), "--no-progress", *map(str, flags)]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = shard_dataset.main(argv)
        logged = "".join(f"{record.getMessage()}\n" for record in caplog.records)
        return subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err + logged)
    return run


def _jpeg(arr: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _encoded(arr: np.ndarray, fmt_name: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt_name)
    return buf.getvalue()


def make_imagenet_like(root: Path, per_class: int = 5) -> tuple[dict, dict]:
    """Writes an ImageNet-like folder; returns (good: relpath → (label, copied), bad: relpath → reason fragment)."""
    rng = np.random.default_rng(0)
    good, bad = {}, {}

    def put(rel: str, data: bytes, label: int, copied: bool) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        good[rel] = (label, copied)

    for label, cls in enumerate(CLASSES):
        for i in range(per_class):
            arr = rng.integers(0, 256, (int(rng.integers(12, 30)), int(rng.integers(12, 30)), 3), dtype=np.uint8)
            ext = ["JPEG", "jpg", "JPG", "jpeg"][i % 4]
            sub = "deep/er/" if i == 0 else ("sub/" if i == 1 else "")
            put(f"{cls}/{sub}{cls}_{i}.{ext}", _jpeg(arr), label, copied=True)
        arr = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
        put(f"{cls}/gray.JPEG", _jpeg(arr, "L"), label, copied=True)
        put(f"{cls}/cmyk.JPEG", _jpeg(arr, "CMYK"), label, copied=False)
        put(f"{cls}/png_named.JPEG", _encoded(arr, "PNG"), label, copied=False)
        put(f"{cls}/alpha.png", _encoded(arr, "PNG", "RGBA"), label, copied=False)
        put(f"{cls}/pic.{'webp' if label % 2 else 'BMP'}", _encoded(arr, "WEBP" if label % 2 else "BMP"), label,
            copied=False)
    full = _jpeg(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (root / CLASSES[0] / "truncated.JPEG").write_bytes(full[: len(full) // 2])  # cut inside the entropy-coded data
    (root / CLASSES[0] / "cut_header.jpg").write_bytes(full[:200])
    (root / CLASSES[0] / "zero.jpg").write_bytes(b"")
    (root / CLASSES[1] / "text.jpg").write_text("not an image at all\n")
    (root / CLASSES[1] / "dangling.JPEG").symlink_to(root / "does-not-exist.JPEG")
    os.mkfifo(root / CLASSES[2] / "fifo.jpg")
    (root / CLASSES[2] / "notes.txt").write_text("ignored: not an image file name\n")
    (root / "README.txt").write_text("ignored: not inside a class folder\n")
    bad.update({f"{CLASSES[0]}/truncated.JPEG": "truncated", f"{CLASSES[0]}/cut_header.jpg": "truncated",
                f"{CLASSES[0]}/zero.jpg": "empty",
                f"{CLASSES[1]}/text.jpg": "not an image", f"{CLASSES[1]}/dangling.JPEG": "dangling symlink",
                f"{CLASSES[2]}/fifo.jpg": "not a regular file"})
    return good, bad


def tree_digest(root: Path) -> str:
    """Names, sizes, mtimes and bytes of every regular file under root (FIFOs and dangling links by name only)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_fifo():
            st = path.stat()
            h.update(f"{st.st_size} {st.st_mtime_ns}".encode() + path.read_bytes())
    return h.hexdigest()


def shard_files(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir()) if p.suffix in (".tar", ".idx")}


def read_members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """key → {ext: bytes} for one tar, straight from tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


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
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet") / "train"
    good, bad = make_imagenet_like(root)
    return root, good, bad


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_src_is_never_modified(imagenet, reference):
    """By the reference run of the real CLI (its digest of SRC taken just before it ran)."""
    src, _, _ = imagenet
    _, _, before = reference
    assert tree_digest(src) == before


@pytest.mark.slow
def test_index_files_are_what_dali_wds2idx_writes(reference, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships in the DALI wheel
    dest, _, _ = reference
    for shard in list_shards(dest):
        with wds2idx.IndexCreator(str(shard.path), str(tmp_path / "ref.idx"), verbose=False) as creator:
            creator.create_index()
        assert shard.index_path.read_bytes() == (tmp_path / "ref.idx").read_bytes(), shard.index_path


@pytest.mark.slow
def test_read_back_with_webdataset(imagenet, reference):
    import webdataset as wds

    _, good, _ = imagenet
    dest, _, _ = reference
    urls = [str(s.path) for s in list_shards(dest)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == len(good)
    assert all(isinstance(s["jpg"], Image.Image) and s["jpg"].mode == "RGB" for s in samples)
    assert sorted(s["cls"] for s in samples) == sorted(label for label, _ in good.values())


@pytest.mark.slow
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


@pytest.mark.slow
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
    from pipeline import shard_writer

    read_source = shard_writer.read_source

    def slow_read_source(path):
        time.sleep(0.05)
        return read_source(path)

    shard_writer.read_source = slow_read_source
    sys.exit(shard_dataset.main(sys.argv[1:]))
""")


@pytest.mark.slow
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


@pytest.mark.slow
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
    (only_truncated / "a" / "ok.jpg").write_bytes(_jpeg(arr))
    (only_truncated / "a" / "cut.jpg").write_bytes(_jpeg(arr)[:-400])
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
    big = _jpeg(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    small = _jpeg(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
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
    (src / "ok.jpg").write_bytes(_jpeg(np.full((8, 8, 3), 90, np.uint8)))
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
    jpeg = _jpeg(arr)
    assert prepare_jpeg(jpeg) == (jpeg, False, None)
    png_bytes, converted, note = prepare_jpeg(_encoded(arr, "PNG"))
    assert converted and note is None and Image.open(io.BytesIO(png_bytes)).format == "JPEG"
    cmyk, converted, _ = prepare_jpeg(_jpeg(arr, "CMYK"))
    assert converted and Image.open(io.BytesIO(cmyk)).mode == "RGB"
    deep = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(deep, "PNG")  # 16-bit gray, mid level
    deep_bytes, _, _ = prepare_jpeg(deep.getvalue())
    assert abs(np.asarray(Image.open(io.BytesIO(deep_bytes))).mean() - 128) < 3  # scaled, not clipped to white


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
