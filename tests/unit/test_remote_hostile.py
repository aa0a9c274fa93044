"""pipeline/remote/ against a hostile HTTP server of the tests' own (tests/hostile_server.py: a thread on 127.0.0.1,
no process) and a manifest that lies: every failure is one line (a RemoteError, ManifestError or LocalDiskError)
naming the URL or path and what to do, within the retry policy's bound in time and in bytes. A manifest with a
shard named `..`, a negative size, a bad digest, JSON nested 100,000 deep, 2 GB or endless; a redirect loop; a
server sending a byte a second; 401, 403 and 404 (not retried); an endless index (bounded by its sample count); a
local disk that is full (/dev/full: the kernel's ENOSPC); a bucket with no AWS credentials; a server's password
in ~/.netrc; an upload to a server that fails, in shard_dataset.py's words."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from hostile_server import HostileServer, basic_auth, body, endless, redirect_loop, take_put, trickle

import shard_dataset
from pipeline.remote.fetch import (LocalDiskError, RemoteError, RetryPolicy, fetch_file, index_bound, read_bytes)
from pipeline.remote.upload import upload_shards
from pipeline.shards.format import ManifestError, format_index, sample_key
from pipeline.shards.manifest import (MANIFEST_NAME, MAX_JSON_DEPTH, Manifest, ShardRecord, manifest_to_dict,
                                      read_manifest, write_manifest)
from util.net import free_port

POLICY = RetryPolicy(timeout_s=2, first_delay_s=0.05, max_delay_s=0.2)
TAR = b"\0" * 2048
INDEX = format_index([[("jpg", 512, 10, f"{sample_key(0)}.jpg")], [("jpg", 1536, 10, f"{sample_key(1)}.jpg")]])


def good_manifest() -> Manifest:
    record = ShardRecord(0, "s-000000.tar", "s-000000.idx", 2, len(TAR), hashlib.sha256(TAR).hexdigest(),
                         hashlib.sha256(INDEX.encode()).hexdigest(), "a" * 64, 0)
    return Manifest("complete", "/src", {"seed": 0}, "b" * 64, 2, 1, None, [record], [], [], {})


def manifest_bytes(**record_fields) -> bytes:
    obj = manifest_to_dict(good_manifest())
    obj["shards"][0].update(record_fields)
    return json.dumps(obj).encode()


@pytest.fixture
def server():
    with HostileServer() as running:
        yield running


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ----- 1. a manifest that lies, read from a server and from a folder
LIES = {
    "name ..": ({"name": ".."}, "field 'name' '..' is not a file name <prefix>-NNNNNN.tar in the folder"),
    "name with a folder": ({"name": "../../etc/x.tar"}, "field 'name' '../../etc/x.tar' is not a file name"),
    "index name with a folder": ({"index_name": "a/b.idx"}, "field 'index_name' 'a/b.idx' is not a file name"),
    "negative size": ({"bytes": -5}, "field 'bytes' is negative (-5)"),
    "negative samples": ({"samples": -2}, "field 'samples' is negative (-2)"),
    "digest not hex": ({"sha256": "zz" * 32}, "field 'sha256' 'zzzz"),
    "digest short": ({"index_sha256": "ab"}, "field 'index_sha256' 'ab' is not a sha256 (64 hex digits)"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_manifest_that_lies_is_one_line_naming_it_and_the_field(lie, server, tmp_path):
    fields, said = LIES[lie]
    server.route("/x/manifest.json", body(manifest_bytes(**fields)))
    with pytest.raises(ManifestError) as remote:
        read_manifest(server.url("/x/"), fetch=POLICY, key="data.shards")
    assert one_line(remote).startswith(f"data.shards {server.url('/x/')}: {server.url('/x/manifest.json')}: "
                                       f"shards[0]: {said}"), remote.value
    assert str(remote.value).endswith("--overwrite`")
    (tmp_path / MANIFEST_NAME).write_bytes(manifest_bytes(**fields))
    with pytest.raises(ManifestError) as local:
        read_manifest(tmp_path, check="none")
    assert one_line(local).startswith(f"{tmp_path / MANIFEST_NAME}: shards[0]: {said}")


def test_the_good_manifest_of_these_tests_is_read(server):
    """The lies above differ from a manifest that is read: the refusals are the lies'."""
    server.route("/x/manifest.json", body(manifest_bytes()))
    assert read_manifest(server.url("/x/"), fetch=POLICY) == good_manifest()


def test_json_nested_100000_deep_is_one_line_not_a_recursion_error(server, tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    server.route("/x/manifest.json", body(deep))
    with pytest.raises(ManifestError) as remote:
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert one_line(remote) == (f"{server.url('/x/manifest.json')}: JSON nested more than {MAX_JSON_DEPTH} deep, "
                                f"not a manifest; rebuild DEST with `python shard_dataset.py SRC DEST --overwrite`")
    (tmp_path / MANIFEST_NAME).write_bytes(deep)
    with pytest.raises(ManifestError, match=r"JSON nested more than \d+ deep"):
        read_manifest(tmp_path)
    # brackets inside strings do not nest: a name full of them is read as the JSON it is
    brackets = "[" * 100 + '"{'  # written as JSON: "[[[...\\"{"
    (tmp_path / MANIFEST_NAME).write_bytes(manifest_bytes(plan_sha256=brackets))
    assert read_manifest(tmp_path, check="none").shards[0].plan_sha256 == brackets


def test_a_manifest_announced_as_2_gb_is_refused_before_its_body_and_not_retried(server):
    server.route("/x/manifest.json", endless(announce=2_000_000_000))
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert time.monotonic() - t0 < 1 and server.hits["/x/manifest.json"] == 1
    assert one_line(err) == (f"{server.url('/x/manifest.json')}: the server announced 2,000,000,000 bytes, more "
                             f"than the 268,435,456 this file may have; check data.shards and the server's copy")


def test_an_endless_small_file_stops_at_its_limit_in_memory_and_time(server):
    """The manifest's limit (256 MiB) is this bound; 4 MiB here keeps the test fast: the same code reads both."""
    server.route("/x/manifest.json", endless(b"{"))
    with pytest.raises(RemoteError) as err:
        read_bytes(server.url("/x/manifest.json"), POLICY, limit=4 << 20)
    assert one_line(err).endswith("the server sent more than the 4,194,304 bytes this file may have; check "
                                  "data.shards and the server's copy")
    assert server.hits["/x/manifest.json"] == 1


# ----- 2. a redirect loop
def test_a_redirect_loop_is_one_final_line(server):
    server.route("/x/manifest.json", redirect_loop)
    with pytest.raises(RemoteError) as err:
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert one_line(err) == (f"{server.url('/x/manifest.json')}: the server redirected more than 10 times (a "
                             f"redirect loop?); check the URL")
    assert server.hits["/x/manifest.json"] == 10  # aiohttp's requests, once: no retry


# ----- 3. a byte a second
@pytest.mark.parametrize("name", ["manifest.json", "s-000000.tar"])
def test_a_server_sending_a_byte_a_second_ends_at_the_policys_bound(name, server, tmp_path):
    server.route(f"/x/{name}", trickle(TAR, per_s=1))
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        if name == MANIFEST_NAME:
            read_manifest(server.url("/x/"), fetch=POLICY)
        else:
            fetch_file(server.url(f"/x/{name}"), tmp_path / "part", len(TAR), hashlib.sha256(TAR).hexdigest(), POLICY)
    took = time.monotonic() - t0
    assert POLICY.timeout_s <= took < POLICY.timeout_s + 0.5, took
    message = one_line(err)
    assert message.startswith(f"{server.url('/x/' + name)}: the server was too slow: "), message
    assert re.search(r"was too slow: [1-3] bytes? in 2.0 s, 1 try in 2 s \(data.fetch_timeout_s\); check the "
                     r"server, or raise data.fetch_timeout_s for a slow link$", message), message


# ----- 4. answers that another try would not change
@pytest.mark.parametrize("status, said", [
    (401, "the server answered 401 Unauthorized: check the credentials (the user and password in ~/.netrc, or in "
          "the URL)"),
    (403, "the server answered 403 Forbidden: check the credentials (the user and password in ~/.netrc, or in the "
          "URL)"),
    (404, "the server has no such file (404); check data.shards")])
def test_401_403_and_404_fail_at_once(status, said, server):
    server.route("/x/manifest.json", body(b"no", status))
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert time.monotonic() - t0 < 1 and server.hits["/x/manifest.json"] == 1
    assert one_line(err) == f"{server.url('/x/manifest.json')}: {said}"


def test_a_503_is_still_retried_until_the_bound(server):
    server.route("/x/manifest.json", body(b"busy", 503))
    with pytest.raises(RemoteError, match=r"the server answered 503 Service Unavailable, \d+ tries in 2 s"):
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert server.hits["/x/manifest.json"] > 2


# ----- 5. an endless index
def test_an_endless_index_stops_at_the_bound_its_sample_count_gives(server, tmp_path):
    assert len(INDEX) <= index_bound(2) < 1 << 20  # the real index of 2 samples fits; the bound is small
    server.route("/x/s-000000.idx", endless(b"jpg 512 10 0000000000.jpg\n"))
    part = tmp_path / "s-000000.idx.part"
    with pytest.raises(RemoteError) as err:
        fetch_file(server.url("/x/s-000000.idx"), part, None, "0" * 64, POLICY, most=index_bound(2))
    assert one_line(err).endswith(f"the server sent more than the {index_bound(2):,} bytes this file may have; "
                                  f"check data.shards and the server's copy")
    assert part.stat().st_size <= index_bound(2) and server.hits["/x/s-000000.idx"] == 1


# ----- 6. a full local disk
def test_a_full_local_disk_is_not_retried_nor_blamed_on_the_server(server):
    """/dev/full: every write fails with the kernel's ENOSPC, as a full disk's does."""
    server.route("/x/s-000000.tar", body(TAR))
    with pytest.raises(LocalDiskError) as err:
        fetch_file(server.url("/x/s-000000.tar"), Path("/dev/full"), len(TAR), hashlib.sha256(TAR).hexdigest(), POLICY)
    assert one_line(err) == "/dev/full: cannot write the download (No space left on device); free space on that disk"
    assert err.value.path == Path("/dev/full") and err.value.errno == 28 and server.hits["/x/s-000000.tar"] == 1


# ----- 7. a bucket without credentials
def test_a_bucket_with_no_aws_credentials_is_one_line(tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata (169.254.169.254)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: nothing leaves
    s3fs.S3FileSystem.clear_instance_cache()
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        read_manifest("s3://bucket/shards/", fetch=POLICY)
    s3fs.S3FileSystem.clear_instance_cache()
    assert time.monotonic() - t0 < 3
    assert one_line(err) == (
        "s3://bucket/shards/manifest.json: no AWS credentials found (botocore looked in the environment, ~/.aws and "
        "the instance metadata); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
        "~/.aws/credentials")


# ----- 8. a password in ~/.netrc
def test_a_servers_password_is_read_from_netrc_and_its_absence_is_a_final_401(server, tmp_path, monkeypatch):
    server.route("/x/manifest.json", basic_auth("reader", "s3cret", body(manifest_bytes())))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RemoteError) as err:
        read_manifest(server.url("/x/"), fetch=POLICY)
    assert one_line(err).endswith(": the server answered 401 Unauthorized: check the credentials (the user and "
                                  "password in ~/.netrc, or in the URL)")
    assert server.hits["/x/manifest.json"] == 1
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login reader password s3cret\n")
    netrc.chmod(0o600)
    assert read_manifest(server.url("/x/"), fetch=POLICY) == good_manifest()


def test_a_password_in_the_url_is_never_shown(server):
    server.route("/x/manifest.json", body(b"no", 403))
    with pytest.raises(RemoteError) as err:
        read_manifest(server.url("/x/", auth="me:hunter2"), fetch=POLICY)
    assert "hunter2" not in one_line(err) and server.url("/x/manifest.json", auth="me:***") in str(err.value)


# ----- 9. an upload to a server that fails
def upload_policy(seconds: int) -> RetryPolicy:
    """The policy shard_dataset.py builds from --upload-timeout-s (its parse_args, as a user types it)."""
    args = shard_dataset.parse_args(["src", "dest", "--upload", "http://h/x/", "--upload-timeout-s", str(seconds)])
    return dataclasses.replace(RetryPolicy(args.upload_timeout_s, timeout_key="--upload-timeout-s",
                                           url_key="--upload"), first_delay_s=0.05, max_delay_s=0.2)


@pytest.mark.parametrize("seconds", ["0", "-3", "1.5", "x"])
def test_upload_timeout_takes_a_whole_number_of_seconds(seconds, capsys):
    with pytest.raises(SystemExit):
        shard_dataset.parse_args(["src", "dest", "--upload", "http://h/x/", "--upload-timeout-s", seconds])
    assert "argument --upload-timeout-s: " in capsys.readouterr().err


def test_an_upload_to_a_failing_server_names_its_own_bound_not_the_training_config(server, tmp_path):
    write_manifest(tmp_path, good_manifest())
    (tmp_path / "s-000000.tar").write_bytes(TAR)
    (tmp_path / "s-000000.idx").write_text(INDEX)
    server.route("/up/s-000000.tar", body(b"broken", 500))
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        upload_shards(tmp_path, good_manifest(), server.url("/up/"), upload_policy(2))
    assert time.monotonic() - t0 < 3
    message = one_line(err)
    assert message.startswith(f"{server.url('/up/s-000000.tar')}: the server answered 500 Internal Server Error, ")
    assert message.endswith(" tries in 2 s (--upload-timeout-s); check the server")
    assert "data." not in message and "checkpoint" not in message


def test_an_upload_puts_the_manifest_last(server, tmp_path):
    write_manifest(tmp_path, good_manifest())
    (tmp_path / "s-000000.tar").write_bytes(TAR)
    (tmp_path / "s-000000.idx").write_text(INDEX)
    stored = {}
    for name in ("s-000000.tar", "s-000000.idx", MANIFEST_NAME):
        server.route(f"/up/{name}", take_put(stored))
    upload_shards(tmp_path, good_manifest(), server.url("/up/"), upload_policy(2))
    assert list(stored) == ["/up/s-000000.tar", "/up/s-000000.idx", "/up/manifest.json"]
    assert stored["/up/s-000000.tar"] == TAR


def test_a_file_of_a_signed_folder_url_goes_before_its_query():
    from pipeline.remote.fetch import join

    signed = "https://h/x/manifest.json?X-Amz-Signature=abc&t=1"
    assert join("https://h/x/?X-Amz-Signature=abc&t=1", "manifest.json") == signed
    assert join("http://h/x", "a.tar") == join("http://h/x/", "a.tar") == "http://h/x/a.tar"
