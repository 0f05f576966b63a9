"""Crawler test kit: hostile image bytes and running a crawl in a subprocess.

Crawls run in subprocesses because a Twisted reactor cannot be restarted in one process.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

# Crawl settings that keep test crawls fast; every value is an ordinary setting a user can pass.
FAST = [
    "AUTOTHROTTLE_ENABLED=false",
    "CONCURRENT_REQUESTS_PER_DOMAIN=8",
    "KD3_FLUSH_SECONDS=0.5",
    "KD3_STATS_FLUSH_SECONDS=0.3",
    "KD3_MIN_SIDE=16",
    "LOG_LEVEL=WARNING",
]


def smooth_image(seed: int, size=(48, 48), fmt: str = "JPEG", **save) -> bytes:
    """A distinct image that compresses like a photo (gradients plus a little noise)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) + np.stack([xx * rng.uniform(-2, 2), yy * rng.uniform(-2, 2),
                                              (xx + yy) * rng.uniform(-1, 1)], -1)  # fmt: skip
    pixels = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **save)
    return buf.getvalue()


def animated_gif(seed: int) -> bytes:
    frames = [
        Image.open(io.BytesIO(smooth_image(seed + i, fmt="PNG"))).convert("P") for i in range(3)
    ]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))  # fmt: skip


def truncated_jpeg(seed: int) -> bytes:
    data = smooth_image(seed, size=(64, 64))
    return data[: len(data) // 2]


def crawl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "crawler.run", *args]


def start_crawl(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        crawl_command(*args),
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_crawl(
    *args: str, env: dict | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    return subprocess.run(
        crawl_command(*args),
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settings_args(*extra: str) -> list[str]:
    return [arg for setting in (*FAST, *extra) for arg in ("-s", setting)]


def settings_dict(*extra: str) -> dict:
    """FAST and `extra` as a job file's `settings` (JSON values, else text, as `-s` reads them)."""
    values = {}
    for setting in (*FAST, *extra):
        name, _, value = setting.partition("=")
        try:
            values[name] = json.loads(value)
        except ValueError:
            values[name] = value
    return values


def write_job(path: Path, **job) -> Path:
    """A CrawlJob JSON file for `python -m crawler.run --job`."""
    path.write_text(json.dumps(job))
    return path
