"""Create job records and queue their tasks (what `kd3 submit` does)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis

from workers.artifacts import ArtifactStore
from workers.jobs import Job, JobStore
from workers.settings import Settings
from workers.stages import ARTIFACT_PREFIX


def upload_input(store: ArtifactStore, ref: str | None) -> str | None:
    """Put a local input into the artifact store, so no job depends on the submitter's disk."""
    if ref is None or ref.startswith(ARTIFACT_PREFIX):
        return ref
    path = Path(ref)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        digest = hashlib.sha256((path / "manifest.parquet").read_bytes()).hexdigest()[:12]
        key = f"pools/{path.name}-{digest}"
        if not store.exists(key):
            store.put_dir(path, key)
    else:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = f"inputs/{digest}{path.suffix}"
        if not store.exists(key):
            store.put_file(path, key)
    return ARTIFACT_PREFIX + key


def enqueue(settings: Settings, job: Job) -> None:
    from workers.celery_app import make_app, send_job

    send_job(make_app(settings), job)


def submit_distill(settings: Settings, *, teacher: str, pool: str, train: dict,
                   teacher_arch: str | None = None, eval_set: str | None = None) -> Job:  # fmt: skip
    store = ArtifactStore(settings.artifacts)
    spec = {
        "teacher": ARTIFACT_PREFIX + store.put_teacher(teacher),
        "teacher_arch": teacher_arch,
        "pool": upload_input(store, pool),
        "eval": upload_input(store, eval_set),
        "train": train,
    }
    jobs = JobStore(redis.Redis.from_url(settings.redis_url))
    job = jobs.create("distill", spec)
    enqueue(settings, job)
    return job
