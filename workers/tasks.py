"""Celery tasks: one per stage, each taking only a job id (the spec lives in the job record)."""

from __future__ import annotations

import logging
import threading
import time
from functools import cache

import redis
from celery import signals

from workers.artifacts import ArtifactStore
from workers.celery_app import app, send_job
from workers.jobs import Job, JobStore
from workers.runtime import execute_job, recover_stale_jobs

log = logging.getLogger(__name__)


def settings():
    return app.conf.kd3_settings


@cache
def job_store() -> JobStore:
    return JobStore(redis.Redis.from_url(settings().redis_url))


@cache
def artifact_store() -> ArtifactStore:
    return ArtifactStore(settings().artifacts, local_roots=settings().local_roots)


def enqueue(job: Job) -> None:
    send_job(app, job)


def _run(kind: str, job_id: str) -> str:
    from workers.stages import STAGES  # imports torch/scrapy lazily, inside the worker

    return execute_job(
        job_store(),
        artifact_store(),
        job_id,
        STAGES[kind],
        settings().lease_ttl,
        enqueue,
        settings().redis_url,
    )


@app.task(name="kd3.crawl")
def crawl(job_id: str) -> str:
    return _run("crawl", job_id)


@app.task(name="kd3.dedup")
def dedup(job_id: str) -> str:
    return _run("dedup", job_id)


@app.task(name="kd3.score")
def score(job_id: str) -> str:
    return _run("score", job_id)


@app.task(name="kd3.distill")
def distill(job_id: str) -> str:
    return _run("distill", job_id)


@signals.worker_ready.connect
def _start_recovery(**_kwargs) -> None:
    """Every worker watches for jobs whose worker died and requeues them."""

    def loop() -> None:
        while True:
            try:
                for job_id in recover_stale_jobs(job_store(), enqueue):
                    log.warning("requeued %s: its worker stopped renewing the lease", job_id)
            except redis.exceptions.ConnectionError:
                pass  # redis restarting; try again next round
            time.sleep(settings().recover_interval)

    threading.Thread(target=loop, name="kd3-recovery", daemon=True).start()
