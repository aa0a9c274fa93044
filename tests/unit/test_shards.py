"""pipeline.shards: naming, DALI index text, manifest round trip and validation errors, per-rank assignment."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile

import pytest

from pipeline import DataError
from pipeline.shards import dest as shard_dest
from pipeline.shards.format import (TAR_BLOCK, ManifestError, format_index, index_name, parse_index, read_index,
                                    sample_key, shard_name, tar_member_bytes)
from pipeline.shards.manifest import (MANIFEST_NAME, STATUS_COMPLETE, STATUS_IN_PROGRESS, Manifest, ShardRecord,
                                      list_shards, read_manifest, write_manifest)
from util.files import is_partial_name, partial_name


def make_dataset(dest, samples=(3, 0, 2), status=STATUS_COMPLETE) -> Manifest:
    """A DEST with one shard per entry of `samples` (0: a planned shard whose inputs were all bad, no files)."""
    dest.mkdir(parents=True, exist_ok=True)
    records = []
    for shard, n in enumerate(samples):
        if n == 0:
            records.append(ShardRecord(shard, None, None, 0, 0, None, None, "p" * 64, 0))
            continue
        tar_bytes = bytes([shard]) * (TAR_BLOCK * 2 * n)
        index = format_index([[("jpg", 512 + 1024 * i, 10, f"{sample_key(i)}.jpg")] for i in range(n)])
        name, idx = shard_name("train", shard), index_name("train", shard)
        (dest / name).write_bytes(tar_bytes)
        (dest / idx).write_text(index)
        records.append(ShardRecord(shard, name, idx, n, len(tar_bytes), hashlib.sha256(tar_bytes).hexdigest(),
                                       hashlib.sha256(index.encode()).hexdigest(), "p" * 64, 0))
    manifest = Manifest(status, "/data/train", {"seed": 0, "prefix": "train"}, "d" * 64, sum(samples) + 1,
                            len(samples), ["a", "b"], records, [{"path": "a/x.jpg", "reason": "empty", "shard": None}],
                            [], {"python": "3.11"})
    write_manifest(dest, manifest)
    return manifest


def edit_manifest(dest, edit) -> None:
    obj = json.loads((dest / MANIFEST_NAME).read_text())
    edit(obj)
    (dest / MANIFEST_NAME).write_text(json.dumps(obj))


def test_names():
    assert shard_name("train", 12) == "train-000012.tar"
    assert index_name("train", 12) == "train-000012.idx"
    key = sample_key(1_281_166)
    assert key == "0001281166" and "." not in key
    assert is_partial_name(partial_name("train-000012.tar"))
    assert not is_partial_name("train-000012.tar")


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 5000])
def test_tar_member_bytes_matches_tarfile(size):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("0000000000.jpg")
        info.size = size
        tar.addfile(info, io.BytesIO(b"x" * size))
        assert tar.offset == tar_member_bytes(size)


def test_index_round_trip_and_rejects_malformed_text():
    samples = [[("cls", 512, 1, "0000000004.cls"), ("jpg", 1536, 1200, "0000000004.jpg")],
               [("cls", 3584, 2, "0000000009.cls"), ("jpg", 4608, 77, "0000000009.jpg")]]
    text = format_index(samples)
    assert text.splitlines()[0] == "v1.2 2"
    assert text.splitlines()[1] == "cls 512 1 0000000004.cls jpg 1536 1200 0000000004.jpg"
    assert parse_index(text) == samples
    with pytest.raises(ManifestError, match="x.idx.*sample count"):
        parse_index(text.replace("v1.2 2", "v1.2 3"), "x.idx")
    with pytest.raises(ManifestError, match="sample count"):
        parse_index(text.replace("v1.2", "v1.1"))
    with pytest.raises(ManifestError, match="malformed"):
        parse_index("v1.2 1\ncls 512 1\n")


GOOD_LINE = "cls 512 1 0000000004.cls jpg 1536 1200 0000000004.jpg"


@pytest.mark.parametrize("line, message", [
    ("cls 512 1 0000000004.cls jpg 1536 1200", "7 fields"),
    ("cls 512 1 0000000004.cls jpg -1536 1200 0000000004.jpg", "non-negative decimal"),
    ("cls 512 1 0000000004.cls jpg 1536 \u0661 0000000004.jpg", "non-negative decimal"),  # an Arabic-Indic digit
    ("cls 512 1 0000000004.cls jpg 1536 1200 ../..", "not <key>.jpg"),
    ("cls 512 1 0000000004.cls jpg 1536 1200 a/0000000004.jpg", "not <key>.jpg"),
    ("cls 512 1 0000000004.cls jpg 1536 1200 0000000004.png", "not <key>.jpg"),
    ("cls 512 1 0000000004.cls jpg 1536 1200 0000000005.jpg", "2 keys"),
    ("cls 512 1 0000000004.cls jpg 1000 1200 0000000004.jpg", "does not follow a tar header"),
    ("cls 512 1 0000000004.cls jpg 512 1200 0000000004.jpg", "does not follow a tar header"),  # overlaps the cls
    ("cls 512 1 0000000004.cls jpg 1536 10000000000000 0000000004.jpg", "ends past the tar's 4096 bytes"),
    ("", "1 fields"),
])
def test_index_with_crafted_fields_is_refused(line, message):
    """Nothing an index says is used before it is checked: numbers, member names, tar order, bounds."""
    assert parse_index(f"v1.2 1\n{GOOD_LINE}\n", "x.idx", tar_size=4096)[0][1] == ("jpg", 1536, 1200,
                                                                                       "0000000004.jpg")
    with pytest.raises(ManifestError, match=f"x.idx: malformed line 2 .*{message}.*--overwrite"):
        parse_index(f"v1.2 1\n{line}\n", "x.idx", tar_size=4096)


def test_read_index_checks_the_manifest_digest_and_sample_count(tmp_path):
    make_dataset(tmp_path, samples=(3, 0, 2))
    shard = list_shards(tmp_path)[1]
    assert shard.index_sha256 and len(read_index(shard)) == 2
    with pytest.raises(ManifestError, match="train-000002.tar: its index .* does not match the index_sha256"):
        read_index(dataclasses.replace(shard, index_sha256="0" * 64))
    with pytest.raises(ManifestError, match="lists 2 samples, the manifest records 3"):
        read_index(dataclasses.replace(shard, samples=3))
    assert isinstance(ManifestError("x"), DataError) and isinstance(ManifestError("x"), ValueError)


def test_manifest_round_trip(tmp_path):
    manifest = make_dataset(tmp_path)
    assert read_manifest(tmp_path, check="checksum") == manifest
    assert read_manifest(tmp_path / MANIFEST_NAME) == manifest
    assert manifest.total_samples == 5
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["total_samples"] == 5
    assert not [p for p in tmp_path.iterdir() if is_partial_name(p.name)]


def test_missing_or_unparsable_manifest_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match=f"{tmp_path / 'manifest.json'}.*cannot read"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match=f"{tmp_path / 'absent' / 'manifest.json'}.*cannot read"):
        read_manifest(tmp_path / "absent")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON.*--overwrite"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.update(format_version=99), "version 99"),
    (lambda o: o.update(format="something-else"), "something-else"),
    (lambda o: o["shards"][0].update(samples="3"), r"shards\[0\].*'samples'.*wrong type"),
    (lambda o: o["shards"][0].pop("sha256"), r"shards\[0\].*'sha256' is missing"),
    (lambda o: o["shards"][1].update(name="x.tar"), r"shards\[1\].*files and checksums exactly when"),
    (lambda o: o.update(total_samples=6), "total_samples 6 is not the sum"),
    (lambda o: o.update(status="weird"), "unknown status"),
    (lambda o: o["shards"].reverse(), "sorted"),
    (lambda o: o.update(planned_shards=2), "within the plan"),
    (lambda o: o.update(classes="a"), "'classes'.*wrong type"),
    (lambda o: o["skipped"].append("a/y.jpg"), "'skipped' or 'ignored'"),
])
def test_damaged_manifest_is_a_clear_error(tmp_path, edit, message):
    make_dataset(tmp_path)
    edit_manifest(tmp_path, edit)
    with pytest.raises(ManifestError, match=message) as err:
        read_manifest(tmp_path, check="none")
    assert str(tmp_path / MANIFEST_NAME) in str(err.value)


def test_incomplete_manifest_is_refused_unless_allowed(tmp_path):
    make_dataset(tmp_path, status=STATUS_IN_PROGRESS)
    with pytest.raises(ManifestError, match="has not finished.*rerun the same"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, allow_incomplete=True).status == STATUS_IN_PROGRESS


def test_missing_shard_and_checksum_mismatch_name_the_shard(tmp_path):
    make_dataset(tmp_path)
    shard = tmp_path / shard_name("train", 2)
    data = bytearray(shard.read_bytes())
    data[10] ^= 1  # same size: only a checksum sees it
    shard.write_bytes(bytes(data))
    read_manifest(tmp_path, check="size")
    with pytest.raises(ManifestError, match=f"{shard.name} does not match the sha256"):
        read_manifest(tmp_path, check="checksum")
    (tmp_path / index_name("train", 0)).unlink()
    with pytest.raises(ManifestError, match=f"{index_name('train', 0)} is missing"):
        read_manifest(tmp_path, check="size")
    read_manifest(tmp_path, check="none")
    shard.write_bytes(b"short")
    with pytest.raises(ManifestError, match=r"2 shard\(s\).*5 bytes, the manifest records"):
        read_manifest(tmp_path, check="size")
    with pytest.raises(ValueError, match="check must be one of"):
        read_manifest(tmp_path, check="full")


def test_list_shards_skips_empty_planned_shards(tmp_path):
    make_dataset(tmp_path, samples=(3, 0, 2))
    shards = list_shards(tmp_path)
    assert [s.path.name for s in shards] == ["train-000000.tar", "train-000002.tar"]
    assert [s.index_path.name for s in shards] == ["train-000000.idx", "train-000002.idx"]
    assert [s.samples for s in shards] == [3, 2] and all(s.path.is_absolute() for s in shards)


def test_describe_mismatch(tmp_path):
    manifest = make_dataset(tmp_path)
    same = dict(source=manifest.source, options=manifest.options, plan_sha256=manifest.plan_sha256, planned_inputs=6)
    assert shard_dest.describe_mismatch(manifest, **same) is None
    assert "holds shards of /data/train" in shard_dest.describe_mismatch(manifest, **{**same, "source": "/other"})
    assert "seed 0 → 1" in shard_dest.describe_mismatch(manifest, **{**same, "options": {"seed": 1, "prefix": "train"}})
    assert "other options" in shard_dest.describe_mismatch(manifest, **{**same, "options": {"seed": 0}})
    assert "6 files then, 7 now" in shard_dest.describe_mismatch(manifest, **{**same, "plan_sha256": "e" * 64,
                                                                          "planned_inputs": 7})


def test_remove_shard_files_leaves_other_files(tmp_path):
    manifest = make_dataset(tmp_path)
    (tmp_path / "train-000009.tar").write_bytes(b"stale shard of ours")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "other-000000.tar").write_bytes(b"another prefix: not ours")
    assert shard_dest.remove_shard_files(tmp_path, manifest, "train") == 1 + 4 + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other-000000.tar"]


def test_shard_record_fields_are_the_manifest_schema(tmp_path):
    make_dataset(tmp_path)
    obj = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(obj["shards"][0]) == {f.name for f in dataclasses.fields(ShardRecord)}
    assert list(obj)[:2] == ["format", "format_version"]
