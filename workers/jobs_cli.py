"""`kd3 submit|status|watch|cancel|jobs|artifacts`: jobs on the Celery workers, through Redis."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import redis

from workers.jobs import TERMINAL, Job, JobNotFound, JobStore
from workers.settings import Settings


def register(subparsers) -> None:
    submit = subparsers.add_parser("submit", help="queue a job on the workers; prints its id")
    kinds = submit.add_subparsers(dest="kind", required=True)
    dist = kinds.add_parser("distill", help="distil a teacher checkpoint on a pool (gpu queue)")
    dist.add_argument("--teacher", required=True, help="checkpoint file (uploaded to the store)")
    dist.add_argument("--teacher-arch", help="architecture, for a bare state_dict")
    dist.add_argument("--pool", required=True, help="pool directory or .npz, or artifact:KEY")
    dist.add_argument("--eval", help="evaluation pool or .npz, or artifact:KEY")
    dist.add_argument("--student", default="resnet8")
    dist.add_argument("--method", default="kd3")
    dist.add_argument("--epochs", type=int, default=20)
    dist.add_argument("--batch-size", type=int, default=256)
    dist.add_argument("--lr", type=float, default=0.05)
    dist.add_argument("--seed", type=int, default=0)
    dist.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any other training setting (see kd3 distill --help), value as JSON or text",
    )  # fmt: skip
    dist.set_defaults(func=cmd_submit_distill)
    pipe = kinds.add_parser("pipeline", help="crawl -> dedup -> distill from a config file")
    pipe.add_argument("config", metavar="CONFIG", help="pipeline YAML (see configs/)")
    pipe.add_argument("--wait", action="store_true", help="follow it until it ends")
    pipe.set_defaults(func=cmd_submit_pipeline)
    _add_connection(submit)

    run = subparsers.add_parser("run", help="run a pipeline config in this process (no broker)")
    run.add_argument("config", metavar="CONFIG", help="pipeline YAML (see configs/)")
    _add_connection(run)
    run.set_defaults(func=cmd_run)

    for name, helptext in [("status", "a job's record"), ("watch", "follow a job live"),
                           ("cancel", "stop a job (at its next step)"),
                           ("artifacts", "a job's outputs")]:  # fmt: skip
        cmd = subparsers.add_parser(name, help=helptext)
        cmd.add_argument("job", metavar="JOB")
        _add_connection(cmd)
        cmd.set_defaults(func=globals()[f"cmd_{name}"])
    jobs = subparsers.add_parser("jobs", help="recent jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20)
    _add_connection(jobs)
    jobs.set_defaults(func=cmd_jobs)


def _add_connection(parser) -> None:
    parser.add_argument("--redis", help="Redis URL (default: $KD3_REDIS_URL)")
    parser.add_argument("--artifacts", help="artifact store (default: $KD3_ARTIFACTS)")


def _settings(args) -> Settings:
    base = Settings.from_env()
    return Settings(
        **{**base.__dict__, "redis_url": args.redis or base.redis_url,
           "artifacts": args.artifacts or base.artifacts}
    )  # fmt: skip


def _store(args) -> JobStore:
    return JobStore(redis.Redis.from_url(_settings(args).redis_url))


def _get(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound as exc:
        raise SystemExit(f"kd3: {exc}") from None


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"kd3 submit: --option {text!r} is not KEY=VALUE")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def cmd_submit_distill(args) -> int:
    from distill.trainer import TrainConfig  # validates the settings before anything is queued
    from workers.submit import submit_distill

    train = {"method": args.method, "student": args.student, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             **dict(_parse_option(o) for o in args.option)}  # fmt: skip
    try:
        TrainConfig(**train)
    except TypeError as exc:
        raise SystemExit(f"kd3 submit distill: {exc}") from None
    job = submit_distill(
        _settings(args), teacher=args.teacher, teacher_arch=args.teacher_arch, pool=args.pool,
        eval_set=args.eval, train=train,
    )  # fmt: skip
    print(job.id)
    return 0


def _load_checked(path: str):
    """Load a pipeline config and check each stage's settings before anything is queued."""
    from distill.models import model_names
    from distill.trainer import TrainConfig
    from workers.config import ConfigError, load_config

    config = load_config(path)
    if config.distill is not None:
        if config.distill.student not in model_names():
            raise ConfigError(f"{path}: distill.student: unknown architecture "
                              f"'{config.distill.student}' (kd3 models lists them)")  # fmt: skip
        try:
            TrainConfig(**config.distill.train())
        except TypeError as exc:
            raise ConfigError(f"{path}: distill.options: {exc}") from None
    return config


def cmd_submit_pipeline(args) -> int:
    from workers.artifacts import ArtifactStore
    from workers.pipeline import create_pipeline
    from workers.submit import enqueue

    config = _load_checked(args.config)
    settings = _settings(args)
    store = JobStore(redis.Redis.from_url(settings.redis_url))
    job = create_pipeline(store, ArtifactStore(settings.artifacts), config,
                          lambda child: enqueue(settings, child))  # fmt: skip
    print(job.id)
    if args.wait:
        args.job = job.id
        return cmd_watch(args)
    return 0


def cmd_run(args) -> int:
    from workers.run_local import run_pipeline

    config = _load_checked(args.config)
    settings = _settings(args)
    parent, children = run_pipeline(config, settings.artifacts, args.redis)
    print(format_summary(parent, children, settings.artifacts))
    return 0 if parent.status == "succeeded" else 1


def format_summary(parent: Job, children: list[Job], artifacts_root: str) -> str:
    lines = [
        f"pipeline {parent.id}: {parent.status}" + (f" ({parent.error})" if parent.error else "")
    ]
    for job in children:
        m = job.metrics
        if job.kind == "crawl":
            detail = f"{m.get('images_stored', 0)} images stored"
        elif job.kind == "dedup":
            detail = ", ".join(f"{k} {v}" for k, v in m.items() if isinstance(v, int))
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
    from tqdm import tqdm

    store = _store(args)
    job = _get(store, args.job)
    bar = tqdm(total=0, desc=job.id, disable=not sys.stderr.isatty())
    after = "0-0"
    while True:
        for event_id, fields in store.events(job.id, after, block_ms=1000):
            after = event_id
            _show(bar, fields)
        job = store.get(job.id)
        if job.status in TERMINAL and not store.events(job.id, after):
            break
        time.sleep(0.2 if job.status == "queued" else 0)
    bar.close()
    print(format_job(job))
    return 0 if job.status == "succeeded" else 1


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
