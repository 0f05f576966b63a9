"""The artifact store every worker can read: teachers, pools and job results.

A local directory by default (a shared volume in compose); any fsspec URL (s3://, gs://, ...)
when workers run on several machines. Keys are relative paths such as
`teachers/<sha256>.pt`, `pools/<name>` or `jobs/<job id>/student.pt`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import fsspec


class ArtifactError(Exception):
    """An input that cannot be put into, or read from, the artifact store."""


PREFIX = "artifact:"  # a job spec's reference to a key in the store, e.g. artifact:pools/pets


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.root_url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.is_local:
            self.root = os.path.abspath(self.root)
            os.makedirs(self.root, exist_ok=True)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "kd3" / "artifacts")

    def url(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.url(key))

    def put_file(self, local: str | os.PathLike, key: str) -> str:
        self.fs.makedirs(os.path.dirname(self.url(key)), exist_ok=True)
        self.fs.put_file(str(local), self.url(key))
        return key

    def put_teacher(self, local: str | os.PathLike) -> str:
        """Upload a checkpoint under its content hash, so a job never depends on the
        submitter's disk and the same file is stored once."""
        if not Path(local).is_file():
            raise ArtifactError(f"{local}: no such checkpoint file")
        key = f"teachers/{_file_sha256(Path(local))}{Path(local).suffix or '.pt'}"
        if not self.exists(key):
            self.put_file(local, key)
        return key

    def put_dir(self, local: str | os.PathLike, key: str) -> str:
        if self.is_local and Path(local).resolve() == Path(self.url(key)).resolve():
            return key
        self.fs.put(str(local).rstrip("/") + "/", self.url(key), recursive=True)
        return key

    def upload_input(self, ref: str | None) -> str | None:
        """A local input (file or pool directory) put into the store, as an `artifact:` ref, so
        no job depends on the submitter's disk. Refs and None pass through."""
        if ref is None or ref.startswith(PREFIX):
            return ref
        path = Path(ref)
        if not path.exists():
            raise ArtifactError(f"{path}: no such file or directory")
        if path.is_dir():
            digest = hashlib.sha256((path / "manifest.parquet").read_bytes()).hexdigest()[:12]
            key = f"pools/{path.name}-{digest}"
            if not self.exists(key):
                self.put_dir(path, key)
        else:
            key = f"inputs/{_file_sha256(path)}{path.suffix}"
            if not self.exists(key):
                self.put_file(path, key)
        return PREFIX + key

    def resolve(self, ref: str) -> Path:
        """A spec input as a local path: an `artifact:` ref is fetched, anything else is a path."""
        return self.local_path(ref[len(PREFIX) :]) if ref.startswith(PREFIX) else Path(ref)

    def local_path(self, key: str) -> Path:
        """A local path holding the artifact: the file itself when the store is local, else a
        cached download."""
        if self.is_local:
            return Path(self.url(key))
        target = self.cache_dir / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            if self.fs.isdir(self.url(key)):
                self.fs.get(self.url(key), str(tmp), recursive=True)
            else:
                self.fs.get_file(self.url(key), str(tmp))
            os.replace(tmp, target)
        return target

    def work_dir(self, key: str) -> Path:
        """A directory a stage writes into (and resumes from); `sync_up` publishes it under `key`.

        On a remote store the directory starts as a copy of what was published last, so a job
        that moves to another machine finds its checkpoints.
        """
        if self.is_local:
            path = Path(self.url(key))
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = self.cache_dir / "work" / key
        if not path.exists() and self.exists(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.url(key) + "/", str(path), recursive=True)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sync_up(self, work: Path, key: str) -> None:
        if not self.is_local:
            self.put_dir(work, key)

    def remove(self, key: str) -> None:
        if self.is_local:
            shutil.rmtree(self.url(key), ignore_errors=True)
        elif self.exists(key):
            self.fs.rm(self.url(key), recursive=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
