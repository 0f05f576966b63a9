"""One atomic write: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, durable: bool = False
) -> Path:
    """Write `data` (bytes, or a function that writes to the open file) to a temporary file in
    the target's folder, then rename it over `path`. `durable` also fsyncs the file first (for
    files whose loss after a crash would lose work: manifests, checkpoints)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (
        FileNotFoundError
    ):  # the folder is missing: create it only then (mkdir costs a syscall per level)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
