"""Job records in Redis: the one place a job's state lives, so it survives worker and Flower
restarts (and Redis restarts, with AOF on).

    kd3:job:<id>            hash: kind, spec (JSON, immutable), status, timestamps, progress,
                            metrics, error, artifacts, attempts, worker, next, parent
    kd3:job:<id>:events     stream of events (status changes, progress)
    kd3:job:<id>:cancel     set when a cancel was asked for (checked every training step)
    kd3:job:<id>:lease      held by the one worker running the job; renewed while it runs
    kd3:jobs                sorted set of job ids by creation time
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import redis

from common.errors import UserError

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
KINDS = ("crawl", "dedup", "score", "distill", "pipeline")
_JSON_FIELDS = ("spec", "progress", "metrics", "artifacts", "children")


class JobNotFound(UserError, KeyError):
    def __str__(self) -> str:
        return f"no job '{self.args[0]}'"


@dataclass
class Job:
    id: str
    kind: str
    spec: dict
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    progress: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    children: list = field(default_factory=list)
    error: str = ""
    attempts: int = 0
    worker: str = ""
    next: str = ""  # the job to enqueue when this one succeeds (pipelines)
    parent: str = ""

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Job:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        for name in _JSON_FIELDS:
            if name in data:
                data[name] = json.loads(data[name])
        for name in ("created_at", "started_at", "finished_at", "updated_at"):
            if data.get(name):
                data[name] = float(data[name])
            else:
                data.pop(name, None)
        data["attempts"] = int(data.get("attempts", 0))
        return cls(**data)


def _key(job_id: str, suffix: str = "") -> str:
    return f"kd3:job:{job_id}" + (f":{suffix}" if suffix else "")


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client

    # -- creating and reading ------------------------------------------------------------------
    def create(self, kind: str, spec: dict, *, next_job: str = "", parent: str = "",
               children: list[str] | None = None) -> Job:  # fmt: skip
        if kind not in KINDS:
            raise ValueError(f"unknown job kind '{kind}'")
        now = time.time()
        job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        record = {
            "id": job_id,
            "kind": kind,
            "spec": json.dumps(spec),
            "status": "queued",
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "next": next_job,
            "parent": parent,
            "children": json.dumps(children or []),
        }
        with self.r.pipeline() as p:
            p.hset(_key(job_id), mapping=record)
            p.zadd("kd3:jobs", {job_id: now})
            p.xadd(_key(job_id, "events"), {"event": "queued"})
            p.execute()
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return Job.from_hash(raw)

    def list(self, limit: int = 50) -> list[Job]:
        ids = [i.decode() for i in self.r.zrevrange("kd3:jobs", 0, limit - 1)]
        return [self.get(i) for i in ids if self.r.exists(_key(i))]

    def set_children(self, job_id: str, children: list[str]) -> None:
        self.r.hset(_key(job_id), "children", json.dumps(children))

    # -- state changes -------------------------------------------------------------------------
    def _event(self, job_id: str, event: str, **fields) -> None:
        payload = {"event": event, **{k: json.dumps(v) for k, v in fields.items()}}
        self.r.xadd(_key(job_id, "events"), payload, maxlen=10000, approximate=True)

    def mark_running(self, job_id: str, worker: str) -> None:
        now = time.time()
        with self.r.pipeline() as p:
            p.hsetnx(_key(job_id), "started_at", now)
            p.hset(_key(job_id), mapping={"status": "running", "worker": worker, "updated_at": now})
            p.hincrby(_key(job_id), "attempts", 1)
            p.execute()
        self._event(job_id, "running", worker=worker)

    def mark_queued(self, job_id: str, reason: str) -> None:
        self.r.hset(_key(job_id), mapping={"status": "queued", "updated_at": time.time()})
        self._event(job_id, "requeued", reason=reason)

    def report_progress(self, job_id: str, progress: dict) -> None:
        self.r.hset(
            _key(job_id), mapping={"progress": json.dumps(progress), "updated_at": time.time()}
        )
        self._event(job_id, "progress", **progress)

    def finish(self, job_id: str, status: str, *, error: str = "", metrics: dict | None = None,
               artifacts: dict | None = None) -> None:  # fmt: skip
        if status not in TERMINAL:
            raise ValueError(f"'{status}' is not a final status")
        now = time.time()
        mapping = {"status": status, "finished_at": now, "updated_at": now, "error": error}
        if metrics is not None:
            mapping["metrics"] = json.dumps(metrics)
        if artifacts is not None:
            mapping["artifacts"] = json.dumps(artifacts)
        self.r.hset(_key(job_id), mapping=mapping)
        self._event(job_id, status, error=error)

    # -- cancel --------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> Job:
        """Ask a job to stop. A queued job is cancelled at once; a running one at its next step."""
        job = self.get(job_id)
        if job.status in TERMINAL:
            return job
        self.r.set(_key(job_id, "cancel"), 1)
        self._event(job_id, "cancel_requested")
        if job.status == "queued":
            self.finish(job_id, "cancelled", error="cancelled before it started")
        for child in job.children:
            self.request_cancel(child)
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(_key(job_id, "cancel")))

    # -- leases: a job runs on one worker at a time ----------------------------------------------
    def lease(self, job_id: str, ttl: float) -> redis.lock.Lock:
        """A lock that expires `ttl` seconds after its last renewal (see workers.lease)."""
        return self.r.lock(_key(job_id, "lease"), timeout=ttl, blocking=False, thread_local=False)

    def lease_held(self, job_id: str) -> bool:
        return bool(self.r.exists(_key(job_id, "lease")))

    def running_without_lease(self) -> list[str]:
        """Jobs marked running whose worker stopped renewing its lease (it died)."""
        stale = []
        for raw in self.r.zrange("kd3:jobs", 0, -1):
            job_id = raw.decode()
            if self.r.hget(_key(job_id), "status") == b"running" and not self.lease_held(job_id):
                stale.append(job_id)
        return stale

    def claim_requeue(self, job_id: str, attempts: int) -> bool:
        """Only one recoverer requeues a given attempt of a job."""
        return bool(self.r.set(_key(job_id, f"requeue:{attempts}"), 1, nx=True, ex=86400))

    # -- events --------------------------------------------------------------------------------
    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None):
        """[(event_id, {field: value})] after `after`; blocks up to block_ms for new ones."""
        reply = self.r.xread({_key(job_id, "events"): after}, block=block_ms, count=1000)
        out = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                decoded = {k.decode(): v.decode() for k, v in fields.items()}
                out.append((event_id.decode(), decoded))
        return out
