"""The artifact store every worker can read: teachers, pools and job results.

A local directory by default (a shared volume in compose); any fsspec URL (s3://, gs://, ...)
when workers run on several machines. Keys are relative paths such as
`teachers/<sha256>.pt`, `pools/<name>` or `jobs/<job id>/student.pt`; every key, and every
path a key maps to (the store itself, or the local cache of a remote store), is checked by
workers.references before it is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import fsspec

from workers.references import (  # noqa: F401 - ArtifactError and PREFIX are used from here
    PREFIX,
    ArtifactError,
    check_key,
    check_local_path,
    inside,
    parse_ref,
)


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 local_roots: Iterable[str | os.PathLike] = ()):  # fmt: skip
        """`local_roots`: folders whose files a job spec may name by plain path (none: every
        input must be an `artifact:` reference)."""
        self.root_url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.is_local:
            self.root = os.path.abspath(self.root)
            os.makedirs(self.root, exist_ok=True)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "kd3" / "artifacts")
        self.local_roots = tuple(local_roots)

    def url(self, key: str) -> str:
        """Where `key` lives in the store; the one place keys become paths or URLs."""
        if self.is_local:
            return str(inside(self.root, check_key(key)))
        return f"{self.root.rstrip('/')}/{check_key(key)}"

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
        key = f"teachers/{_file_sha256(Path(local))}{_suffix(Path(local)) or '.pt'}"
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
        no job depends on the submitter's disk. Refs (once checked) and None pass through."""
        if ref is None:
            return None
        if ref.startswith(PREFIX):
            parse_ref(ref)
            return ref
        path = Path(ref)
        if not path.exists():
            raise ArtifactError(f"{path}: no such file or directory")
        if path.is_dir():
            from pool.store import Pool

            pool = Pool.open(path)
            name = re.sub(r"[^A-Za-z0-9._-]", "_", path.resolve().name)[:64]
            # Under the pool's lock: a writer folding manifest parts mid-copy could otherwise
            # leave the copy with an old base and without the parts folded into the new one.
            with pool.locked():
                key = f"pools/{name}-{pool.fingerprint()[:12]}"
                if not self.exists(key):
                    self.put_dir(path, key)
        else:
            key = f"inputs/{_file_sha256(path)}{_suffix(path)}"
            if not self.exists(key):
                self.put_file(path, key)
        return PREFIX + key

    def resolve(self, ref: str) -> Path:
        """A spec input as a local path: an `artifact:` ref is fetched; anything else is a local
        path, refused unless it lies in one of `local_roots`."""
        if isinstance(ref, str) and ref.startswith(PREFIX):
            return self.local_path(parse_ref(ref))
        return check_local_path(ref, self.local_roots)

    def local_path(self, key: str) -> Path:
        """A local path holding the artifact: the file itself when the store is local, else a
        cached download."""
        if not self.exists(key):
            raise ArtifactError(f"{PREFIX}{key}: not in the artifact store")
        if self.is_local:
            return Path(self.url(key))
        target = inside(self.cache_dir, check_key(key))
        if not target.exists():
            tmp = target.with_name(target.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            self._download(key, tmp)
            os.replace(tmp, target)
        return target

    def _download(self, key: str, target: Path) -> None:
        """Copy `key` (a file or a folder) to `target`; every file of a folder must land inside
        `target`, whatever names the remote store holds."""
        url = self.url(key).rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.fs.isdir(url):
            self.fs.get_file(url, str(target))
            return
        for remote in self.fs.find(url):
            if not remote.startswith(url + "/"):
                raise ArtifactError(f"{remote}: listed outside {url}")
            dest = inside(target, remote[len(url) + 1 :])
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(dest))

    def work_dir(self, key: str) -> Path:
        """A directory a stage writes into (and resumes from); `sync_up` publishes it under `key`.

        On a remote store the directory starts as a copy of what was published last, so a job
        that moves to another machine finds its checkpoints.
        """
        if self.is_local:
            path = Path(self.url(key))
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = inside(self.cache_dir / "work", check_key(key))
        if not path.exists() and self.exists(key):
            self._download(key, path)
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


def _suffix(path: Path) -> str:
    """The file's extension when it is a plain one (it ends up in a key), else none."""
    return path.suffix if re.fullmatch(r"\.[A-Za-z0-9_-]{1,16}", path.suffix) else ""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
