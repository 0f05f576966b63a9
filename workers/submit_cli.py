"""`kd3 submit crawl|dedup|distill|pipeline` (queue on the workers) and `kd3 run` (in-process).

A job's flags are generated from the same options models as the stage's own command (`kd3
crawl`, `kd3 dedup`, `kd3 distill`) and the YAML config's sections (workers/config.py), and
every form builds the same PipelineConfig a YAML file would: one set of names, defaults and
checks.
"""

from __future__ import annotations

import argparse

from common.options import add_flags, from_args
from crawler.cli import add_class_flags, classes_from_args
from crawler.options import CrawlOptions
from workers.cli import add_connection_flags
from workers.config import (
    DedupSpec,
    DistillSpec,
    PipelineConfig,
    ScoreSpec,
    check_stages,
    load_config,
    validate_config,
)
from workers.jobs_cli import _settings, _store, follow, format_job, format_summary

EXAMPLES = {
    "crawl": "kd3 submit crawl --name pets --classes cat,dog --per-class 200 --wait",
    "dedup": "kd3 submit dedup --pool artifact:pools/pets --eval test.npz --sim 0.95",
    "score": "kd3 submit score --pool artifact:pools/pets --teacher teacher.pt --wait",
    "distill": "kd3 submit distill --teacher teacher.pt --pool artifact:pools/pets "
    "--eval test.npz --epochs 60",
    "pipeline": "kd3 submit pipeline configs/pipeline.yaml --wait --redis redis://host:6379/0",
}


def _kind(kinds, name: str, help_text: str, description: str):
    parser = kinds.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_flags(parser)
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    return parser


def register(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        description="Queue a job on the Celery workers and print its id (kd3 watch ID follows "
        "it). Local inputs are uploaded to the artifact store first.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_flags(submit)
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")

    crawl = _kind(kinds, "crawl", "collect a pool (crawl queue)",
                  "Crawl into the store's pools/NAME; the flags are kd3 crawl's.")  # fmt: skip
    crawl.add_argument("--name", required=True, help="the pool is stored as pools/NAME (required)")
    add_class_flags(crawl)
    add_flags(crawl, CrawlOptions, title="crawl options (as kd3 crawl)")
    crawl.set_defaults(func=cmd_submit_crawl)

    dedup = _kind(kinds, "dedup", "mark duplicates and evaluation overlaps (cpu queue)",
                  "Dedup a pool of the store; the flags are kd3 dedup's.")  # fmt: skip
    dedup.add_argument("--pool", required=True,
                       help="artifact:pools/NAME, or a local pool (uploaded, then marked) (required)")  # fmt: skip
    add_flags(dedup, DedupSpec, exclude=("use_teacher",), title="dedup options (as kd3 dedup)")
    dedup.set_defaults(func=cmd_submit_dedup)

    score = _kind(kinds, "score", "the teacher's per-class yield of a pool (gpu queue)",
                  "Score a pool of the store (manifest columns, report); the flags are "
                  "kd3 pool score's.")  # fmt: skip
    score.add_argument("--pool", required=True,
                       help="artifact:pools/NAME, or a local pool (uploaded, then scored) (required)")  # fmt: skip
    add_flags(score, ScoreSpec, title="score options (as kd3 pool score)")
    score.set_defaults(func=cmd_submit_score)

    dist = _kind(kinds, "distill", "distil a teacher checkpoint on a pool (gpu queue)",
                 "Distil on a worker; the flags are kd3 distill's.")  # fmt: skip
    dist.add_argument("--pool", required=True,
                      help="pool directory or .npz (uploaded), or artifact:KEY (required)")  # fmt: skip
    add_flags(dist, DistillSpec, title="distill options (as kd3 distill)")
    dist.set_defaults(func=cmd_submit_distill)

    pipe = _kind(kinds, "pipeline", "crawl -> dedup -> score -> distill from a config file",
                 "Queue every stage of a pipeline config; each starts when the one before "
                 "succeeded.")  # fmt: skip
    pipe.add_argument("config", metavar="CONFIG", help="pipeline YAML (see configs/)")
    pipe.set_defaults(func=cmd_submit_pipeline)

    run = subparsers.add_parser(
        "run",
        description="Run a pipeline config in this process, stage after stage, with the "
        "workers' code but no broker. Redis is --redis / $KD3_REDIS_URL, else one started "
        "for the run.",
        epilog="example:\n  kd3 run configs/pipeline.yaml --artifacts runs/artifacts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", metavar="CONFIG", help="pipeline YAML (see configs/)")
    add_connection_flags(run)
    run.set_defaults(func=cmd_run)


def _queue(args, config: PipelineConfig, where: str) -> int:
    from workers.submit import submit

    settings = _settings(args)
    job = submit(settings, check_stages(config, where))
    print(job.id, flush=True)
    if not args.wait:
        return 0
    store = _store(args)
    job = follow(store, job.id)
    if job.kind == "pipeline":  # one line per stage, with its outputs
        print(format_summary(job, [store.get(c) for c in job.children], settings.artifacts))
    else:
        print(format_job(job))
    return 0 if job.status == "succeeded" else 1


def _one_stage(args, kind: str, section, **raw) -> int:
    """Queue a one-stage config whose section comes from the flags (a bad flag is named)."""
    where = f"kd3 submit {kind}"
    raw[kind] = from_args(section, args, where).model_dump(exclude_unset=True)
    return _queue(args, validate_config(raw, where), where)


def cmd_submit_crawl(args) -> int:
    return _one_stage(args, "crawl", CrawlOptions, name=args.name, classes=classes_from_args(args))


def cmd_submit_dedup(args) -> int:
    return _one_stage(args, "dedup", DedupSpec, name="dedup", pool=args.pool)


def cmd_submit_score(args) -> int:
    return _one_stage(args, "score", ScoreSpec, name="score", pool=args.pool)


def cmd_submit_distill(args) -> int:
    return _one_stage(args, "distill", DistillSpec, name="distill", pool=args.pool)


def cmd_submit_pipeline(args) -> int:
    return _queue(args, load_config(args.config), args.config)


def cmd_run(args) -> int:
    from workers.run_local import run_pipeline

    config = check_stages(load_config(args.config), args.config)
    settings = _settings(args)
    parent, children = run_pipeline(config, settings.artifacts, getattr(args, "redis", None))
    print(format_summary(parent, children, settings.artifacts))
    return 0 if parent.status == "succeeded" else 1
