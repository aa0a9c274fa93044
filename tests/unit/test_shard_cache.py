"""The node's shard cache (pipeline/remote/cache.py) and the fetches of pipeline/remote/fetch.py without a server, in
process: a URL with no server, or one that answers nothing, is one line naming it once the bound is spent, a host
the DNS does not know one line at once; a cache
smaller than two shards is refused naming its key; downloads left by a killed process are removed. (Against a real
nginx: e2e/test_remote_shards.py.)"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from served import FAST

from pipeline import DataError
from pipeline.remote.cache import ShardCache
from pipeline.remote.fetch import RemoteError, RetryPolicy, unknown_host
from pipeline.shards.manifest import read_manifest
from util.net import free_port


def test_a_url_with_no_server_is_one_line_naming_it_within_the_bound():
    url = f"http://127.0.0.1:{free_port()}/shards/"
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        read_manifest(url, fetch=RetryPolicy(1.5))
    took, message = time.monotonic() - t0, str(err.value)
    assert took < 4, took
    assert "\n" not in message and message.startswith(f"{url}manifest.json: the server could not be reached")
    # a refused connection is retried (a server restarts); the line ends at what to check: a fresh run has no
    # checkpoint to resume from (the run's guard adds that advice where one exists)
    assert message.endswith(" tries in 1.5 s (data.fetch_timeout_s); check the server"), message


def test_a_host_the_dns_does_not_know_fails_at_once_naming_it():
    """A typo in the host was retried for data.fetch_timeout_s (five minutes by default). A .invalid name never
    resolves (RFC 2606), here without a network; a resolver that could not answer (EAI_AGAIN) is retried."""
    try:
        socket.getaddrinfo("no-such-host.invalid", 80)
        resolver = "resolves every name"
    except socket.gaierror as err:
        resolver = "does not answer" if err.errno == socket.EAI_AGAIN else None
    if resolver:
        pytest.skip(f"this machine's resolver {resolver}: an unknown host cannot be told apart here")
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        read_manifest("http://no-such-host.invalid/x/", fetch=RetryPolicy(300.0), key="data.shards")
    assert time.monotonic() - t0 < 5
    assert str(err.value) == ("http://no-such-host.invalid/x/manifest.json: the host no-such-host.invalid is not known "
                              "(DNS); check the URL")
    assert unknown_host(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "http://h/") is None
    assert unknown_host(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "http://h:8/x") == "h"


def test_a_server_that_answers_nothing_is_one_line_once_the_bound_is_spent():
    """A slow server: it takes the connection (the kernel's backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/shards/"
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as err:
            read_manifest(url, fetch=RetryPolicy(1.0))
    assert 1.0 <= time.monotonic() - t0 < 3
    assert str(err.value).startswith(f"{url}manifest.json: the server sent nothing for 1 s, 1 try in 1 s ")


def test_a_cache_smaller_than_two_shards_is_refused_naming_the_key(small_shards, tmp_path):
    manifest = read_manifest(small_shards)
    largest = max(r.bytes for r in manifest.shards)
    with pytest.raises(DataError, match=r"^data.cache_gb .*: the cache must hold at least two shards"):
        ShardCache.open("http://127.0.0.1:1/x/", manifest, tmp_path, int(1.5 * largest), FAST)


def test_downloads_left_by_a_killed_process_are_removed_and_hold_no_room(small_shards, tmp_path):
    manifest = read_manifest(small_shards)
    cache = ShardCache.open("http://127.0.0.1:1/x/", manifest, tmp_path, None, FAST)
    name = manifest.shards[0].name
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid
    (cache.dir / f"{name}.{gone}.7.part").write_bytes(b"cut")
    (cache.dir / f"{name}.{os.getpid()}.7.part").write_bytes(b"in flight")
    assert cache.usage() == 2 * manifest.shards[0].bytes  # each held at the shard's size
    again = ShardCache.open("http://127.0.0.1:1/x/", manifest, tmp_path, None, FAST)
    assert sorted(p.name for p in again.dir.glob("*.part")) == [f"{name}.{os.getpid()}.7.part"]
    assert again.usage() == manifest.shards[0].bytes


# ----- what a cached file is, and a disk that fills

def served_cache(server, small_shards, tmp_path) -> ShardCache:
    """small_shards served from memory by a thread on 127.0.0.1, and a cache of them under tmp_path/cache."""
    from hostile_server import body

    for path in small_shards.iterdir():
        server.route(f"/small/{path.name}", body(path.read_bytes()))
    url = server.url("/small/")
    return ShardCache.open(url, read_manifest(url, fetch=FAST), tmp_path / "cache", None, FAST)


def test_a_cached_tar_changed_on_disk_is_checked_again_and_fetched_when_it_differs(small_shards, tmp_path, caplog):
    from hostile_server import HostileServer

    with HostileServer() as server:
        cache = served_cache(server, small_shards, tmp_path)
        tar = cache.shard_files()[0].path
        cache.ensure(tar)
        assert server.hits["/small/" + tar.name] == 1
        os.utime(tar, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, the same bytes: hashed, kept
        assert cache.ensure(tar) == tar and server.hits["/small/" + tar.name] == 1
        data = bytearray(tar.read_bytes())  # the same size, other bytes: trained on silently before
        data[600:604] = b"XXXX"
        tar.write_bytes(bytes(data))
        for process in (cache, served_cache(server, small_shards, tmp_path)):  # this process, and a new one
            assert process.ensure(tar) == tar
            assert tar.read_bytes() == (small_shards / tar.name).read_bytes()
            data = bytearray(tar.read_bytes())
            data[600:604] = b"YYYY"
            tar.write_bytes(bytes(data))
        assert server.hits["/small/" + tar.name] == 3
    assert f"shard cache: {tar} changed on disk after it was verified" in caplog.text
    assert "python -m pipeline.remote.cache" in caplog.text


def test_the_full_recheck_removes_every_cached_file_that_changed(small_shards, tmp_path, capsys):
    from hostile_server import HostileServer

    from pipeline.remote import cache as cache_module

    with HostileServer() as server:
        cache = served_cache(server, small_shards, tmp_path)
        tars = [s.path for s in cache.shard_files()]
        cache.ensure_all(tars)
    bad = tars[1]
    bad.write_bytes(bad.read_bytes()[:-1] + b"!")  # mtime kept below: only a hash finds it
    os.utime(bad, ns=(bad.stat().st_atime_ns, os.stat(tars[0]).st_mtime_ns))
    assert cache_module.main([str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"removed {bad}" in out and "8 cached file(s) checked, 1 removed" in out  # 4 tars, 4 indexes
    assert not bad.exists() and all(t.exists() for t in tars if t != bad)
    assert cache_module.main([str(tmp_path / "nowhere")]) == 2


def test_a_cache_disk_that_fills_during_a_download_is_one_line_naming_data_cache_dir(small_shards, tmp_path):
    """/dev/full answers every write with ENOSPC: the cache folder's files are links to it, as a disk filled by
    another writer after the cache opened."""
    from hostile_server import HostileServer

    with HostileServer() as server:
        cache = served_cache(server, small_shards, tmp_path)
        tar = cache.shard_files()[0].path
        cache_dir = tar.parent
        from pipeline.remote import cache as cache_module
        part = cache_dir / cache_module._part_name(tar.name)
        part.symlink_to("/dev/full")
        with pytest.raises(DataError) as err:
            cache.ensure(tar)
    line = str(err.value)
    print(line)
    assert "\n" not in line and line.startswith(f"data.cache_dir {tmp_path / 'cache'}: cannot write {tar.name}")
    assert "No space left on device" in line and "GB free" in line and "data.cache_gb" in line
    assert "server" not in line
