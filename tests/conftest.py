"""Shared fixtures: real services on loopback (never fakes) and small generated images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crawler.localweb import LocalWeb
from workers.local_redis import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a random 127.0.0.1 port with its own data directory."""
    with RedisServer(data_dir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def local_web():
    """A started LocalWeb on 127.0.0.1 (random port); add routes, then point clients at .url()."""
    with LocalWeb() as web:
        yield web


def make_image_bytes(seed: int, size=(32, 32), fmt: str = "PNG") -> bytes:
    """A distinct random RGB image, encoded."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def image_bytes():
    return make_image_bytes


@pytest.fixture
def free_port_url():
    """A redis:// URL on a 127.0.0.1 port where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"
