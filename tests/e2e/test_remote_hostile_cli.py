"""shard_dataset.py --upload, the real CLI, to a server that fails every PUT (tests/hostile_server.py, a thread of
this test on 127.0.0.1): one error line naming the URL, what the server did, --upload-timeout-s (not the training
config's data.fetch_timeout_s, nor a checkpoint), and what a rerun does; within the bound it was given."""
from __future__ import annotations

import sys
import time

from hostile_server import HostileServer, body
from image_factories import encode, photo
from launches import launch


def test_an_upload_to_a_failing_server_is_one_line_in_shard_dataset_words(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / "x.jpg").write_bytes(encode(photo(seed=ord(label))))
    with HostileServer() as server:
        server.route("/up/shard-000000.tar", body(b"broken", 500))
        t0 = time.monotonic()
        proc = launch([sys.executable, "shard_dataset.py", str(tmp_path / "src"), str(tmp_path / "dest"),
                       "--workers", "1", "--no-progress", "--upload", server.url("/up/"),
                       "--upload-timeout-s", "2"], timeout=120)
        took = time.monotonic() - t0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and took < 60
    assert errors[0].startswith(f"error: {server.url('/up/shard-000000.tar')}: the server answered 500 Internal "
                                f"Server Error, "), errors[0]
    assert errors[0].endswith(" tries in 2 s (--upload-timeout-s); check the server, then rerun the same command: "
                              "DEST's shards are kept (checked, not rebuilt) and uploaded again"), errors[0]
    assert server.hits["/up/shard-000000.tar"] > 1  # a 500 is retried, within the 2 s
