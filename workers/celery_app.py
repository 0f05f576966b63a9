"""The Celery app: Redis broker and backend, JSON only, one job at a time per worker process.

Queues: `crawl` (crawler), `cpu` (dedup), `gpu` (score and distill: the teacher runs there;
one solo worker per GPU).
Start a worker:  celery -A workers.celery_app worker -Q gpu --pool solo --concurrency 1
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from workers.settings import Settings

QUEUE_BY_KIND = {"crawl": "crawl", "dedup": "cpu", "score": "gpu", "distill": "gpu"}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("kd3", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        kd3_settings=settings,
        # Untrusted input never reaches pickle.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A job's message is acknowledged only when the job is over; a worker that dies
        # mid-job leaves it unacknowledged (and our lease recovery requeues it sooner).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue("crawl"), Queue("cpu"), Queue("gpu")],
        task_default_queue="cpu",
        task_routes={f"kd3.{kind}": {"queue": q} for kind, q in QUEUE_BY_KIND.items()},
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_time_limit - 60,
        result_expires=7 * 24 * 3600,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        imports=["workers.tasks"],
    )
    return app


def send_job(app: Celery, job) -> None:
    """Queue the task for a job record; its queue follows its kind."""
    app.send_task(f"kd3.{job.kind}", args=[job.id], queue=QUEUE_BY_KIND[job.kind])


app = make_app()
