"""Shard folders served over HTTP by a real nginx on 127.0.0.1 for the tests (tools/nginx.py), or the test skipped
with one line where nginx is not installed (.ci/run installs Debian's nginx-light as root); and the retry policies the
tests fetch with (the tests without a server, which start no process, use FAST too).

    server = serve(folder, tmp_path / "nginx")   # started; the caller stops it (server.stop())
    server.url(folder.name + "/")
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.remote.fetch import RetryPolicy
from tools.nginx import Nginx, have_nginx

FAST = RetryPolicy(timeout_s=2.5, first_delay_s=0.2, max_delay_s=1.0)  # for a server that stays down
PATIENT = RetryPolicy(timeout_s=10.0, first_delay_s=0.2, max_delay_s=1.0)  # for one that comes back


def serve(root: Path, work: Path, rate: str = "1m") -> Nginx:
    """nginx serving `root` ('limited/...' at `rate` a connection), started."""
    if not have_nginx():
        pytest.skip("nginx is not installed (Debian's nginx-light; .ci/run installs it as root): the tests of shards "
                    "on an HTTP server skip")
    return Nginx(root, work, rate=rate).start()
