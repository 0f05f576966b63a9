"""Running one job on a worker: the lease, progress and cancel checks, the final record.

Delivery rules: a job whose record is already final is skipped (a redelivered duplicate); a job
whose lease another worker holds is skipped (never twice at once); a job whose worker died
(lease expired while the record says running) is requeued by `recover_stale_jobs`, and its stage
resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from common.errors import UserError
from workers.artifacts import ArtifactStore
from workers.jobs import TERMINAL, Job, JobStore

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """Raised inside a stage when the job was cancelled or its lease was lost."""


@dataclass
class StageResult:
    metrics: dict
    artifacts: dict


class LeaseKeeper(threading.Thread):
    """Renews the job's lease until stopped; notes if the lease was lost."""

    def __init__(self, lease, ttl: float):
        super().__init__(daemon=True)
        self.lease, self.ttl = lease, ttl
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        last_ok = time.monotonic()
        while not self.stopped.wait(self.ttl / 4):
            try:
                self.lease.extend(self.ttl, replace_ttl=True)
                last_ok = time.monotonic()
            except redis.exceptions.LockError:
                self.lost.set()  # someone else may run the job now: stop ours
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() - last_ok > self.ttl:
                    self.lost.set()
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.join(self.ttl)


class JobContext:
    """What a stage sees of the job: its id, spec, artifact store, progress and stop checks."""

    def __init__(self, store: JobStore, job: Job, artifacts: ArtifactStore,
                 keeper: LeaseKeeper | None, redis_url: str):  # fmt: skip
        self.store, self.job, self.artifacts, self.keeper = store, job, artifacts, keeper
        self.redis_url = redis_url  # for stages that keep their own records (crawl stats)
        self._last_report = 0.0

    @property
    def job_id(self) -> str:
        return self.job.id

    def progress(self, info: dict, force: bool = False) -> None:
        """Record progress (at most twice a second unless forced); a Redis outage is tolerated."""
        now = time.monotonic()
        if not force and now - self._last_report < 0.5:
            return
        self._last_report = now
        try:
            self.store.report_progress(self.job.id, info)
        except redis.exceptions.ConnectionError:
            log.warning("redis unavailable: progress of %s not recorded", self.job.id)

    def should_stop(self) -> bool:
        if self.keeper is not None and self.keeper.lost.is_set():
            return True
        try:
            return self.store.cancel_requested(self.job.id)
        except redis.exceptions.ConnectionError:
            return False

    def check(self) -> None:
        if self.should_stop():
            raise JobStopped(
                "cancelled" if not (self.keeper and self.keeper.lost.is_set()) else "lease lost"
            )


StageFn = Callable[[dict, JobContext], StageResult]


def worker_name() -> str:
    return f"{socket.gethostname()}:{threading.get_native_id()}"


def execute_job(
    store: JobStore,
    artifacts: ArtifactStore,
    job_id: str,
    stage: StageFn,
    lease_ttl: float,
    enqueue: Callable[[Job], None],
    redis_url: str,
) -> str:
    """Run `stage` for the job if it should run; return what happened, for the task result."""
    job = store.get(job_id)
    if job.status in TERMINAL:
        return f"skipped: already {job.status}"
    lease = store.lease(job_id, lease_ttl)
    if not lease.acquire():
        return "skipped: running on another worker"
    keeper = LeaseKeeper(lease, lease_ttl)
    keeper.start()
    try:
        job = store.get(job_id)  # re-read under the lease
        if job.status in TERMINAL:
            return f"skipped: already {job.status}"
        if store.cancel_requested(job_id):
            store.finish(job_id, "cancelled", error="cancelled before it started")
            return "cancelled"
        store.mark_running(job_id, worker_name())
        _update_parent(store, job, "running")
        ctx = JobContext(store, job, artifacts, keeper, redis_url)
        try:
            result = stage(job.spec, ctx)
        except JobStopped as exc:
            if keeper.lost.is_set():
                return "stopped: lease lost"  # the record stays running; recovery requeues it
            store.finish(job_id, "cancelled", error=str(exc))
            _update_parent(store, job, "cancelled", str(exc))
            return "cancelled"
        except Exception as exc:
            message = _one_line(exc)
            if isinstance(exc, UserError):
                log.warning("job %s failed: %s", job_id, message)
            else:
                log.exception("job %s failed", job_id)
            store.finish(job_id, "failed", error=message)
            _update_parent(store, job, "failed", message)
            return "failed"
        store.finish(job_id, "succeeded", metrics=result.metrics, artifacts=result.artifacts)
        if job.next:
            enqueue(store.get(job.next))
        else:
            _update_parent(store, job, "succeeded")
        return "succeeded"
    finally:
        keeper.stop()
        with contextlib.suppress(redis.exceptions.LockError):
            lease.release()


def _one_line(exc: Exception) -> str:
    """User errors carry their own one-line message; anything else is prefixed by its type."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, UserError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _update_parent(store: JobStore, job: Job, status: str, error: str = "") -> None:
    """A pipeline's record follows its children: running with the first, final with the last."""
    if not job.parent:
        return
    parent = store.get(job.parent)
    if parent.status in TERMINAL:
        return
    if status == "running":
        if parent.status != "running":
            store.mark_running(parent.id, f"via {job.id}")
        store.report_progress(parent.id, {"stage": job.kind, "job": job.id})
    else:
        store.finish(parent.id, status, error=f"{job.kind}: {error}" if error else "")


def recover_stale_jobs(store: JobStore, enqueue: Callable[[Job], None]) -> list[str]:
    """Requeue every job whose worker died (running, lease expired). Safe to run anywhere."""
    requeued = []
    for job_id in store.running_without_lease():
        job = store.get(job_id)
        if store.claim_requeue(job_id, job.attempts):
            store.mark_queued(job_id, "worker lost (lease expired); resuming from checkpoint")
            enqueue(job)
            requeued.append(job_id)
    return requeued
