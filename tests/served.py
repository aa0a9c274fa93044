"""Shard folders served over HTTP by a real nginx on 127.0.0.1 for the tests (tools/nginx.py), or the test skipped
with one line where nginx is not installed (.ci/run installs Debian's nginx-light as root).

    server = serve(folder, tmp_path / "nginx")   # started; the caller stops it (server.stop())
    server.url(folder.name + "/")
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tools.nginx import Nginx, have_nginx


def serve(root: Path, work: Path) -> Nginx:
    if not have_nginx():
        pytest.skip("nginx is not installed (Debian's nginx-light; .ci/run installs it as root): the tests of shards "
                    "on an HTTP server skip")
    return Nginx(root, work).start()
