"""`kd3 status|watch|cancel|jobs|artifacts`: jobs on the Celery workers, through Redis."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from common.services import redis_client
from workers.cli import add_connection_flags
from workers.jobs import TERMINAL, Job, JobStore
from workers.settings import Settings

JOB_EXAMPLES = {
    "status": "kd3 status 3f2c...   # exit status 1 when the job failed",
    "watch": "kd3 watch 3f2c... --redis redis://127.0.0.1:6379/0",
    "cancel": "kd3 cancel 3f2c...   # the job stops at its next step and keeps its checkpoint",
    "artifacts": "kd3 artifacts 3f2c...   # student.pt, metrics.jsonl, report.png ...",
}


def _parser(subparsers, name: str, example: str):
    return subparsers.add_parser(
        name,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(subparsers) -> None:
    for name, example in JOB_EXAMPLES.items():
        cmd = _parser(subparsers, name, example)
        cmd.add_argument("job", metavar="JOB", help="the job id kd3 submit printed")
        add_connection_flags(cmd)
        cmd.set_defaults(func=globals()[f"cmd_{name}"])
    jobs = _parser(subparsers, "jobs", "kd3 jobs --limit 5")
    jobs.add_argument("--limit", type=int, default=20, help="how many (default: %(default)s)")
    add_connection_flags(jobs)
    jobs.set_defaults(func=cmd_jobs)


def _settings(args) -> Settings:
    """The environment's settings, with --redis/--artifacts (given at any level) on top."""
    base = Settings.from_env()
    return Settings(
        **{**base.__dict__, "redis_url": getattr(args, "redis", None) or base.redis_url,
           "artifacts": getattr(args, "artifacts", None) or base.artifacts}
    )  # fmt: skip


def _store(args) -> JobStore:
    return JobStore(redis_client(_settings(args).redis_url))


def _get(store: JobStore, job_id: str) -> Job:
    return store.get(job_id)  # JobNotFound is a one-line user error


def format_summary(parent: Job, children: list[Job], artifacts_root: str) -> str:
    lines = [
        f"pipeline {parent.id}: {parent.status}" + (f" ({parent.error})" if parent.error else "")
    ]
    for job in children:
        m = job.metrics
        if job.kind == "crawl":
            detail = f"{m.get('images_stored', 0)} images stored"
            if "rounds" in m:  # a crawl loop
                detail += f" in {m['rounds']} rounds ({m.get('stopped', '')})"
        elif job.kind == "dedup":
            detail = ", ".join(f"{k} {v}" for k, v in m.items() if isinstance(v, int))
        elif job.kind == "score":
            thin = [c["name"] for c in m.get("classes", []) if not c.get("useful")]
            detail = f"{m.get('useful', 0)} useful images" + (
                f"; none for {', '.join(thin)}" if thin else ""
            )
        else:
            acc = m.get("eval_accuracy")
            detail = f"final accuracy {acc:.2%}" if acc is not None else ""
        lines.append(f"  {job.kind:<8} {job.status:<10} {detail}")
        for name, key in sorted(job.artifacts.items()):
            lines.append(f"           {name}: {artifacts_root.rstrip('/')}/{key}")
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def format_job(job: Job) -> str:
    lines = [
        f"job        {job.id}",
        f"kind       {job.kind}",
        f"status     {job.status}" + (f"  ({job.error})" if job.error else ""),
        f"created    {_when(job.created_at)}",
        f"started    {_when(job.started_at)}",
        f"finished   {_when(job.finished_at)}",
        f"attempts   {job.attempts}" + (f"  on {job.worker}" if job.worker else ""),
        f"progress   {json.dumps(job.progress)}",
    ]
    if job.children:
        lines.append(f"children   {' -> '.join(job.children)}")
    if job.metrics:
        keys = [k for k in ("eval_accuracy", "selected", "epoch") if k in job.metrics]
        lines.append(
            "metrics    " + json.dumps({k: job.metrics[k] for k in keys} or job.metrics)[:300]
        )
    if job.artifacts:
        lines.append("artifacts  " + ", ".join(sorted(job.artifacts)))
    lines.append(f"spec       {json.dumps(job.spec)}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    job = _get(_store(args), args.job)
    print(format_job(job))
    return 0 if job.status != "failed" else 1


def cmd_jobs(args) -> int:
    jobs = _store(args).list(args.limit)
    print(f"{'job':<36} {'kind':<9} {'status':<10} {'created':<20} progress")
    for job in jobs:
        progress = job.progress.get("epoch") or job.progress.get("stage") or ""
        if job.progress.get("epochs"):
            progress = f"epoch {job.progress['epoch']}/{job.progress['epochs']}"
        print(f"{job.id:<36} {job.kind:<9} {job.status:<10} {_when(job.created_at):<20} {progress}")
    return 0


def cmd_cancel(args) -> int:
    job = _store(args).request_cancel(args.job)
    print(f"{job.id}: {job.status}" + (" (cancel requested)" if job.status not in TERMINAL else ""))
    return 0


def cmd_artifacts(args) -> int:
    from workers.artifacts import ArtifactStore

    job = _get(_store(args), args.job)
    store = ArtifactStore(_settings(args).artifacts)
    for name, key in sorted(job.artifacts.items()):
        print(f"{name:<16} {store.url(key)}")
    if not job.artifacts:
        print(f"{job.id} has no artifacts ({job.status})")
    return 0


def cmd_watch(args) -> int:
    """A live progress bar (or plain lines when not on a terminal) until the job ends."""
    store = _store(args)
    job = follow(store, _get(store, args.job).id)
    print(format_job(job))
    return 0 if job.status == "succeeded" else 1


def follow(store: JobStore, job_id: str, stop=None) -> Job:
    """Show a job's events as they come (a bar on a terminal, else plain lines) until it ends,
    or until `stop` (a threading.Event) is set; returns its last record."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=job_id, disable=not sys.stderr.isatty())
    after = "0-0"
    try:
        while True:
            for event_id, fields in store.events(job_id, after, block_ms=1000):
                after = event_id
                _show(bar, fields)
            job = store.get(job_id)
            if (job.status in TERMINAL or (stop and stop.is_set())) and not store.events(
                job_id, after
            ):
                return job
            time.sleep(0.2 if job.status == "queued" else 0)
    finally:
        bar.close()


def _show(bar, fields: dict) -> None:
    values = {k: json.loads(v) if k != "event" else v for k, v in fields.items()}
    event = values.pop("event")
    if event == "progress" and "steps" in values:
        total = values["steps"] * (values.get("epochs") or 1)
        done = (values["epoch"] - 1) * values["steps"] + values["step"]
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=values.get("loss"), refresh=True)
    elif event == "progress" and not bar.disable:
        bar.set_postfix(values, refresh=True)
    else:
        message = f"{event} " + " ".join(
            f"{k}={v}" for k, v in values.items() if v not in ("", None)
        )
        (bar.write if not bar.disable else print)(message.strip())
