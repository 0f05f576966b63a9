"""The real services the tests and the demo stand on: redis-server and the local web."""

import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from crawler.localweb import LocalWeb, Response
from workers.local_redis import RedisServer, redis_server_binary


def test_redis_fixture_is_a_real_server_on_loopback(redis_server):
    client = redis_server.client()
    client.hset("kd3:crawl:t:stats", mapping={"requests": 3})
    assert client.hgetall("kd3:crawl:t:stats") == {b"requests": b"3"}
    info = client.info("server")
    assert info["executable"] == str(redis_server_binary())
    assert redis_server.url.startswith("redis://127.0.0.1:")
    assert info["tcp_port"] == redis_server.port


def test_password_and_aof_survive_a_restart(tmp_path):
    with RedisServer(data_dir=tmp_path / "r", password="s3cret", appendonly=True) as server:
        server.client().rpush("queue", "job-1", "job-2")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        port = server.port
        server.restart()
        assert server.port == port
        assert server.client().lrange("queue", 0, -1) == [b"job-1", b"job-2"]
    assert server.process is None


def test_two_servers_get_different_ports(tmp_path):
    with RedisServer(tmp_path / "a") as a, RedisServer(tmp_path / "b") as b:
        assert a.port != b.port
        a.client().set("k", "a")
        assert b.client().get("k") is None


def test_local_web_serves_routes_handlers_and_404(local_web):
    local_web.add_html("/page", "<a href='/img.png'>cat</a>")
    local_web.add_json("/api", {"ok": True})
    local_web.route("/echo", lambda req: Response(200, req.query["q"][0].encode()))
    with urllib.request.urlopen(local_web.url("/page")) as resp:
        assert resp.headers["Content-Type"].startswith("text/html") and b"cat" in resp.read()
    with urllib.request.urlopen(local_web.url("/api")) as resp:
        assert resp.read() == b'{"ok": true}'
    with urllib.request.urlopen(local_web.url("/echo?q=hello")) as resp:
        assert resp.read() == b"hello"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(local_web.url("/missing"))
    assert err.value.code == 404
    assert local_web.hits("/echo") == 1


def test_local_web_accepts_a_burst_of_connections_beyond_the_default_backlog():
    """300 clients connect before the server accepts any: all are served (backlog 1024)."""
    gate = threading.Event()
    web = LocalWeb()
    web.route("/slow", lambda req: (gate.wait(10), Response(200, b"ok"))[1])
    with web:
        sockets = [socket.create_connection((web.host, web.port), timeout=10) for _ in range(300)]
        for s in sockets:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        gate.set()

        def read(s):
            with s:
                return s.recv(64)

        with ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(read, sockets))
    assert all(r.startswith(b"HTTP/1.1 200") for r in replies)


def test_local_web_on_another_loopback_address():
    with LocalWeb(host="127.0.0.2") as web:
        web.add_bytes("/x", b"two", "text/plain")
        with urllib.request.urlopen(web.url("/x")) as resp:
            assert resp.read() == b"two"
    assert web.host == "127.0.0.2"
