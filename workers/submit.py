"""Queue jobs from this machine (what `kd3 submit` does): records in Redis, tasks to Celery."""

from __future__ import annotations

import functools

from common.services import redis_client
from workers.artifacts import ArtifactStore
from workers.config import DistillSpec, PipelineConfig
from workers.jobs import Job, JobStore
from workers.pipeline import create_pipeline
from workers.settings import Settings


@functools.cache
def _app(settings: Settings):
    """One Celery app (and broker connection pool) per settings, however many jobs are queued."""
    from workers.celery_app import make_app

    return make_app(settings)


def enqueue(settings: Settings, job: Job) -> None:
    from workers.celery_app import send_job

    send_job(_app(settings), job)


def submit(settings: Settings, config: PipelineConfig) -> Job:
    """Upload local inputs, create the job record(s) and queue the first stage."""
    store = JobStore(redis_client(settings.redis_url))
    return create_pipeline(store, ArtifactStore(settings.artifacts), config,
                           lambda job: enqueue(settings, job))  # fmt: skip


def submit_distill(settings: Settings, *, teacher: str, pool: str, train: dict,
                   teacher_arch: str | None = None, eval_set: str | None = None) -> Job:  # fmt: skip
    """One distillation job; `train` holds any DistillOptions fields."""
    spec = DistillSpec(teacher=teacher, teacher_arch=teacher_arch, eval=eval_set, **train)
    return submit(settings, PipelineConfig(name="distill", pool=pool, distill=spec))
