"""A real S3 API on 127.0.0.1 for the tests: moto's server mode (`python -m moto.server`, as s3fs tests itself), with
fake credentials; a test is skipped with one line where moto (with flask, its server extra) is not installed.

    server = serve_s3(tmp_path / "s3")      # started; the caller stops it (server.stop())
    server.create_bucket("shards")
    launch(cmd, env=server.env())           # AWS_ACCESS_KEY_ID=testing ..., AWS_ENDPOINT_URL=http://127.0.0.1:PORT
    server.keys("shards"), server.puts()    # what the bucket holds; the keys PUT, in the order they came

The product names no endpoint itself: s3fs (through aiobotocore and botocore) takes AWS_ENDPOINT_URL from the
environment, as it takes the credentials.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from util.net import free_port

FAKE = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# werkzeug's request line: 127.0.0.1 - - [date] "PUT /bucket/key HTTP/1.1" 200 -
REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def have_moto() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("moto", "flask", "flask_cors"))


def without_aws(env: dict) -> dict:
    """`env` less every variable that gives botocore credentials, a profile or a config file."""
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


class S3Server:
    def __init__(self, work: Path, port: int | None = None):
        self.work, self.port = Path(work), port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / "server.log"

    def env(self, **extra: str) -> dict:
        """The variables a client of this server is given (over the environment's, less its own AWS ones)."""
        return {**without_aws(os.environ), **FAKE, "AWS_ENDPOINT_URL": self.endpoint, **extra}

    def start(self, timeout: float = 30) -> "S3Server":
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**self.env(), "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto's server did not answer on {self.endpoint}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # an answer all the same
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # by its pid: the process this object started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=FAKE["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE["AWS_SECRET_ACCESS_KEY"], region_name=FAKE["AWS_DEFAULT_REGION"])

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def put_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        """Every file of `folder` at s3://bucket/prefix/name (no manifest is read before its shards: it goes last)."""
        s3 = self.client()
        for path in sorted(Path(folder).iterdir(), key=lambda p: (p.name == "manifest.json", p.name)):
            s3.upload_file(str(path), bucket, f"{prefix.strip('/')}/{path.name}")

    def keys(self, bucket: str) -> dict[str, bytes]:
        """{key: its bytes} of everything in `bucket`."""
        s3 = self.client()
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

    def requests(self, method: str) -> list[tuple[str, int]]:
        """(path, status) of each `method` request the server logged, in the order they came."""
        rows = [REQUEST.search(line) for line in self.log.read_text(errors="replace").splitlines()]
        return [(m["path"], int(m["status"])) for m in rows if m and m["method"] == method]


def serve_s3(work: Path) -> S3Server:
    if not have_moto():
        pytest.skip("moto with its server extra is not installed (requirements.txt pins it): the tests against an S3 "
                    "API skip")
    return S3Server(work).start()
