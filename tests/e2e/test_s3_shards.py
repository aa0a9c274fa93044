"""Shards in a bucket (data.shards and --upload an s3:// URL) against a real S3 API on 127.0.0.1: moto's server
(tests/s3_server.py), one for this file, reached by s3fs through AWS_ENDPOINT_URL with fake credentials. The upload
puts the manifest last; 2 steps from the bucket give the losses of the same 2 steps from the folder; a bucket with no
credentials is one line. (The same code against an HTTP server: e2e/test_remote_shards.py, e2e/test_train.py.)"""
from __future__ import annotations

import subprocess
import sys

import pytest
from launches import (ROOT, environment, launch, logged_losses, no_shm_leftovers, ok, python,  # noqa: F401
                      summary, train_args)
from s3_server import serve_s3, without_aws

from pipeline.shards.manifest import read_manifest


@pytest.fixture(scope="module")
def s3(digit_shards, tmp_path_factory):
    """moto's S3 server with the bucket `shards`, holding the digits' train split at s3://shards/train/."""
    server = serve_s3(tmp_path_factory.mktemp("s3"))
    try:
        server.create_bucket("shards")
        server.put_folder(digit_shards["train"], "shards", "train")
        yield server
    finally:
        server.stop()


def test_shard_dataset_uploads_to_the_bucket_manifest_last(s3, digit_shards, tmp_path):
    src = digit_shards["val"].parent / "img" / "val"
    proc = ok(launch([sys.executable, "shard_dataset.py", str(src), str(tmp_path / "local"), "--shard-size", "150",
                      "--no-progress", "--upload", "s3://shards/up/val/"], env=s3.env()))
    assert "train from it with --set data.shards=s3://shards/up/val/" in proc
    local = read_manifest(tmp_path / "local")
    names = [n for r in local.shards for n in (r.name, r.index_name)] + ["manifest.json"]
    puts = [path for path, status in s3.requests("PUT") if path.startswith("/shards/up/val/") and status == 200]
    assert puts == [f"/shards/up/val/{n}" for n in names]  # the manifest last
    held = {key: data for key, data in s3.keys("shards").items() if key.startswith("up/val/")}
    assert held == {f"up/val/{n}": (tmp_path / "local" / n).read_bytes() for n in names}


def test_two_steps_from_the_bucket_equal_two_steps_from_the_folder(s3, trained_run, tmp_path):
    """The session's trained run (e2e/conftest.py: 2 steps from the folder) again, its shards read from the bucket."""
    args = train_args("s3://shards/train/", tmp_path / "run", "optimization.max_steps=2", "checkpoint.every_steps=2",
                      "checkpoint.keep_last=1", f"data.cache_dir={tmp_path / 'cache'}")
    ok(launch(python(args), env=s3.env()))
    want, got = logged_losses(trained_run), logged_losses(tmp_path / "run")
    assert sorted(got) == [1, 2] and got == want, (got, want)
    assert summary(tmp_path / "run")["launches"][-1]["data_network_bytes"] > 0  # read from the bucket
    assert ("/shards/train/manifest.json", 200) in s3.requests("GET")


def test_a_bucket_without_credentials_is_one_line(s3, tmp_path):
    """No AWS variable but the endpoint, no ~/.aws (HOME is empty), no instance metadata: botocore finds no
    credentials, and train.py says so in one line."""
    env = {**without_aws(environment()), "AWS_ENDPOINT_URL": s3.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "HOME": str(tmp_path)}
    proc = subprocess.run(python(train_args("s3://shards/train/", tmp_path / "run", "data.fetch_timeout_s=5")),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "s3://shards/train/" in lines[0] and "credentials" in lines[0], proc.stderr[-3000:]
