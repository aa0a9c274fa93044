"""A small HTTP server on 127.0.0.1 in a daemon thread (no process: the unit tests may use it) whose paths behave
badly on purpose, for the tests of pipeline/remote/ against a hostile server.

    with HostileServer() as server:
        server.route("/x/manifest.json", trickle(b"{}" * 50, per_s=1))   # 1 byte a second
        url = server.url("/x/")
        ...
        server.hits["/x/manifest.json"]   # requests it got (retries included)

A behaviour is a function of the request handler that writes the whole answer; the ones here: `body` (bytes, any
status and headers), `endless` (bytes forever, optionally announcing a length), `trickle`, `redirect_loop`,
`basic_auth` (401 unless the request carries the user and password, then another behaviour) and `take_put` (a PUT
stored in a dict). A client that gives up ends the behaviour: its writes fail, or time out after HANDLER_TIMEOUT_S.
"""
from __future__ import annotations

import base64
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Behaviour = Callable[[BaseHTTPRequestHandler], None]
HANDLER_TIMEOUT_S = 5  # a blocked write to a client that stopped reading fails after this
GONE = (BrokenPipeError, ConnectionResetError, TimeoutError)


def body(data: bytes, status: int = 200, headers: dict | None = None) -> Behaviour:
    def answer(req: BaseHTTPRequestHandler) -> None:
        req.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(data)
    return answer


def endless(fill: bytes = b" ", announce: int | None = None) -> Behaviour:
    """`fill` repeated until the client hangs up; `announce`: the Content-Length sent (none: the body ends at the
    close, as HTTP/1.0 allows)."""
    block = fill * (65536 // len(fill))

    def answer(req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        if announce is not None:
            req.send_header("Content-Length", str(announce))
        req.end_headers()
        while not req.server.stopping.is_set():
            req.wfile.write(block)
    return answer


def trickle(data: bytes, per_s: float = 1.0) -> Behaviour:
    """`data`, announced whole, then sent one byte every 1/per_s seconds."""
    def answer(req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        for i in range(len(data)):
            if req.server.stopping.wait(1 / per_s):
                return
            req.wfile.write(data[i:i + 1])
            req.wfile.flush()
    return answer


def redirect_loop(req: BaseHTTPRequestHandler) -> None:
    """302 to the path asked for: the client follows it until it gives up."""
    req.send_response(302)
    req.send_header("Location", req.path)
    req.send_header("Content-Length", "0")
    req.end_headers()


def basic_auth(user: str, password: str, then: Behaviour) -> Behaviour:
    wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def answer(req: BaseHTTPRequestHandler) -> None:
        if req.headers.get("Authorization") == wanted:
            return then(req)
        body(b"who are you?", 401, {"WWW-Authenticate": 'Basic realm="shards"'})(req)
    return answer


def take_put(store: dict) -> Behaviour:
    """201 for a PUT, its body kept in store[path] (sent whole or chunked, as aiohttp streams a file)."""
    def answer(req: BaseHTTPRequestHandler) -> None:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(req.rfile.readline().split(b";")[0], 16):
                data += req.rfile.read(size)
                req.rfile.readline()
            req.rfile.readline()  # the blank line after the last chunk
        else:
            data = req.rfile.read(int(req.headers.get("Content-Length", 0)))
        store[req.path] = data
        body(b"", 201)(req)
    return answer


class _Handler(BaseHTTPRequestHandler):
    timeout = HANDLER_TIMEOUT_S

    def _serve(self) -> None:
        self.server.hits[self.path] += 1
        behaviour = self.server.routes.get(self.path, body(b"not here", 404))
        try:
            behaviour(self)
        except GONE:
            pass  # the client gave up, which is what these tests are about

    do_GET = do_PUT = do_HEAD = _serve

    def log_message(self, *args) -> None:
        pass  # the tests' output stays their own


class HostileServer:
    """The server, started by `with` (or start()) and stopped at its end; `route(path, behaviour)` sets what a path
    does (a path with no route answers 404)."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.hits, self.httpd.stopping = {}, Counter(), threading.Event()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def hits(self) -> Counter:
        return self.httpd.hits

    def route(self, path: str, behaviour: Behaviour) -> "HostileServer":
        self.httpd.routes[path] = behaviour
        return self

    def url(self, path: str = "/", auth: str = "") -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.httpd.server_address[1]}{path}"

    def start(self) -> "HostileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HostileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
