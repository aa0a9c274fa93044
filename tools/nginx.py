"""A real HTTP server for shards on a server (the tests, bench.py's data suite, trying data.shards=http://...):
Debian's nginx on 127.0.0.1, started with a config of its own (its files, its port, its logs) and stopped by its PID.

    server = Nginx(root=served_folder, work=tmp_path / "nginx").start()
    server.url("shards/")                   # http://127.0.0.1:PORT/shards/ (slow/shards/: the same at 256 KB/s;
                                            # limited/shards/: at Nginx(..., rate="1m") per connection)
    server.fail_with(503)                   # every answer 503 until server.fail_with(None)
    server.requests("shards-000001.tar")    # [(status, bytes sent), ...] of its GETs, from its access log
    server.stop()

PUT is on (nginx's WebDAV module), for shard_dataset.py --upload. `have_nginx()` says whether it is installed
(Debian's nginx-light; .ci/run installs it as root, as it installs Slurm).

    python -m tools.nginx FOLDER [--port 8000]     # serves FOLDER until Ctrl-C
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from util.net import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
{user}worker_processes 1;
error_log {work}/error.log;
pid {work}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format shards '$status $body_bytes_sent $request_method $request_uri';
    access_log {work}/access.log shards;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            if (-f {work}/status) {{ return 503; }}
            dav_methods PUT;
            create_full_put_path on;
        }}
        location /slow/ {{
            alias {root}/;
            limit_rate 256k;
        }}
        location /limited/ {{
            alias {root}/;
            limit_rate {rate};
        }}
    }}
}}
"""


def have_nginx() -> bool:
    return os.access(NGINX, os.X_OK)


class Nginx:
    def __init__(self, root: Path, work: Path, port: int | None = None, rate: str = "1m"):
        self.root, self.work, self.port, self.rate = Path(root), Path(work), port or free_port(), rate
        self.proc: subprocess.Popen | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def start(self) -> "Nginx":
        self.work.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # the worker reads the tests' 0700 temporary folders
        conf = self.work / "nginx.conf"
        conf.write_text(CONFIG.format(user=user, work=self.work, root=self.root, port=self.port, rate=self.rate))
        self.proc = subprocess.Popen([NGINX, "-p", str(self.work), "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.proc.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the master: it stops its worker and exits
            self.proc.wait(timeout=10)
        self.proc = None

    def fail_with(self, status: int | None) -> None:
        """Every answer `status` (503 only) from now on, or none (None)."""
        flag = self.work / "status"
        if status is None:
            flag.unlink(missing_ok=True)
        else:
            assert status == 503, "the config answers 503 only"
            flag.write_text(str(status))

    def requests(self, name: str = "", method: str = "GET", until=None) -> list[tuple[int, int]]:
        """(status, body bytes) of every `method` request whose path ends with `name`, in order. nginx logs a
        request after its last byte has left, so a client can finish before its line is written: `until(rows)`
        waits (up to 10 s) for the lines a test knows must come."""
        deadline = time.monotonic() + 10
        while True:
            log = self.work / "access.log"
            rows = [line.split(" ") for line in log.read_text().splitlines()] if log.exists() else []
            found = [(int(r[0]), int(r[1])) for r in rows if len(r) == 4 and r[2] == method and r[3].endswith(name)]
            if until is None or until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="serve a folder over HTTP on 127.0.0.1 with nginx, until Ctrl-C")
    p.add_argument("folder", type=Path)
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    if not have_nginx():
        print(f"error: nginx is not installed ({NGINX}): apt-get install nginx-light", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # kill PID stops nginx too (the finally below)
    with tempfile.TemporaryDirectory(prefix="nginx_") as work:
        server = Nginx(args.folder.absolute(), Path(work), args.port).start()
        print(f"serving {args.folder} at {server.url()} (Ctrl-C stops)")
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
