"""The one resolver for every name a job spec turns into a path: artifact keys, pool keys, job
and crawl ids, and local paths.

A job spec comes from a queue, so each of these is checked before it touches a disk or a
remote store: keys are relative paths of plain segments ([A-Za-z0-9._-], no `.` or `..`, no
absolute paths, backslashes or NUL), and every local path is checked to stay inside its root
after symlinks are resolved. Local paths in a spec (references without `artifact:`) are refused
unless they lie under a root the worker allows (KD3_LOCAL_ROOTS).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from common.errors import UserError

PREFIX = "artifact:"  # a job spec's reference to a key in the store, e.g. artifact:pools/pets
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_KEY_LENGTH = 512


class ArtifactError(UserError):
    """An input that cannot be put into, or read from, the artifact store."""


class UnsafeReference(ArtifactError, ValueError):
    """A key, id or path that is malformed or could reach outside its root (a ValueError too,
    so a pydantic validator reports it as a bad field)."""


def _shown(value) -> str:
    return repr(value)[:80]


def check_name(value, what: str = "name") -> str:
    """One path segment: a job id, crawl id or pool name."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise UnsafeReference(
            f"{what} {_shown(value)}: use 1-128 of A-Z a-z 0-9 . _ - (not '.' or '..')"
        )
    return value


def check_key(key, what: str = "artifact key") -> str:
    """A key in the artifact store: a relative path of plain segments joined by '/'."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise UnsafeReference(f"{what} {_shown(key)}: not a key of 1-{MAX_KEY_LENGTH} characters")
    try:
        for part in key.split("/"):
            check_name(part)
    except UnsafeReference:
        raise UnsafeReference(
            f"{what} {_shown(key)}: a relative path of segments of A-Z a-z 0-9 . _ - "
            "(no '..', no leading '/', no backslash)"
        ) from None
    return key


def parse_ref(ref, what: str = "reference") -> str:
    """The key of an `artifact:KEY` reference."""
    if not isinstance(ref, str) or not ref.startswith(PREFIX):
        raise UnsafeReference(f"{what} {_shown(ref)}: expected artifact:KEY")
    return check_key(ref[len(PREFIX) :], what)


def pool_key(key, what: str = "pool") -> str:
    """A pool a stage writes into: `pools/NAME`, nothing else in the store."""
    parts = check_key(key, what).split("/")
    if len(parts) != 2 or parts[0] != "pools":
        raise UnsafeReference(f"{what} {_shown(key)}: a pool is stored as pools/NAME")
    return key


def job_key(job_id: str) -> str:
    """Where a job's results live in the store."""
    return f"jobs/{check_name(job_id, 'job id')}"


def inside(root: str | os.PathLike, relative: str) -> Path:
    """`root/relative`, refused if it resolves (symlinks followed) anywhere outside `root`."""
    base = Path(root).resolve()
    if "\0" in relative:
        raise UnsafeReference(f"path {_shown(relative)}: contains NUL")
    path = (base / relative).resolve()
    if path == base or not path.is_relative_to(base):
        raise UnsafeReference(f"{_shown(relative)}: resolves outside {base}")
    return path


def local_roots_from_env(env=os.environ) -> tuple[str, ...]:
    """KD3_LOCAL_ROOTS: directories whose files a job spec may name by path (os.pathsep list)."""
    return tuple(p for p in env.get("KD3_LOCAL_ROOTS", "").split(os.pathsep) if p.strip())


def check_local_path(ref, roots: Iterable[str | os.PathLike]) -> Path:
    """A plain path from a job spec, allowed only inside one of `roots` (none by default)."""
    if not isinstance(ref, str) or not ref or "\0" in ref:
        raise UnsafeReference(f"path {_shown(ref)}: not a usable path")
    path = Path(ref).resolve()
    if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
        raise UnsafeReference(
            f"{_shown(ref)}: local paths are not allowed in jobs on this worker; use artifact:KEY "
            "(kd3 submit uploads local inputs) or list its folder in KD3_LOCAL_ROOTS"
        )
    return path
