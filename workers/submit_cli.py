"""`kd3 submit crawl|dedup|distill|pipeline` (queue on the workers) and `kd3 run` (in-process).

Every form builds the same PipelineConfig a YAML file would, so all paths share one validation.
"""

from __future__ import annotations

import json

from distill.cli import DISTILL_METHODS, METHOD_HELP
from workers.config import ConfigError, PipelineConfig, check_stages, load_config, validate_config
from workers.jobs_cli import _add_connection, _settings, cmd_watch, format_summary


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"'{text}' is not NAME=VALUE")
    return key.strip(), value.strip()


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def register(subparsers) -> None:
    submit = subparsers.add_parser("submit", help="queue a job on the workers; prints its id")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")

    crawl = kinds.add_parser("crawl", help="collect a pool (crawl queue); see kd3 crawl")
    crawl.add_argument("--name", required=True, help="the pool is stored as pools/NAME")
    crawl.add_argument("--classes", type=_csv, required=True, metavar="A,B,...")
    crawl.add_argument(
        "--keywords", type=_pair, action="append", default=[], metavar="CLASS=KW1;KW2"
    )
    crawl.add_argument("--sources", type=_csv, default=["wikimedia", "openverse"], metavar="S1,S2")
    crawl.add_argument("--per-class", type=int, default=100, metavar="N")
    crawl.add_argument("--seed", action="append", default=[], metavar="URL")
    crawl.add_argument(
        "--source-url", type=_pair, action="append", default=[], metavar="SOURCE=URL"
    )
    crawl.add_argument("--allow-network", action="append", default=[], metavar="CIDR")
    crawl.add_argument("-s", "--set", type=_pair, action="append", default=[], metavar="NAME=VALUE")
    crawl.set_defaults(func=cmd_submit_crawl)

    dedup = kinds.add_parser("dedup", help="mark duplicates and evaluation overlaps (cpu queue)")
    dedup.add_argument("--pool", required=True, help="pool directory, or artifact:pools/NAME")
    dedup.add_argument("--eval", help="evaluation set (pool, folder or .npz)")
    dedup.add_argument("--teacher", help="embed with this checkpoint's features")
    dedup.add_argument("--radius", type=int)
    dedup.add_argument("--sim", type=float)
    dedup.set_defaults(func=cmd_submit_dedup)

    dist = kinds.add_parser("distill", help="distil a teacher checkpoint on a pool (gpu queue)")
    dist.add_argument("--teacher", required=True, help="checkpoint file (uploaded to the store)")
    dist.add_argument("--teacher-arch", help="architecture, for a bare state_dict")
    dist.add_argument("--pool", required=True, help="pool directory or .npz, or artifact:KEY")
    dist.add_argument("--eval", help="evaluation pool or .npz, or artifact:KEY")
    dist.add_argument("--student", default="resnet8")
    dist.add_argument(
        "--method", default="kd3", metavar="{" + ",".join(DISTILL_METHODS) + "}", help=METHOD_HELP
    )
    dist.add_argument("--epochs", type=int, default=20)
    dist.add_argument("--batch-size", type=int, default=256)
    dist.add_argument("--lr", type=float, default=0.05)
    dist.add_argument("--seed", type=int, default=0)
    dist.add_argument("--option", type=_pair, action="append", default=[], metavar="KEY=VALUE",
                      help="a training setting a job may set (typed and bounded, see workers/config.py "
                           "DistillOptions and kd3 distill --help), JSON or text")  # fmt: skip
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


def _queue(args, config: PipelineConfig | dict, where: str) -> int:
    """Queue a config; one given as plain data (from flags) is validated like a file's."""
    from workers.submit import submit

    if isinstance(config, dict):
        config = validate_config(config, where)
    job = submit(_settings(args), check_stages(config, where))
    print(job.id)
    if getattr(args, "wait", False):
        args.job = job.id
        return cmd_watch(args)
    return 0


def cmd_submit_crawl(args) -> int:
    keywords = {name: _csv(value.replace(";", ",")) for name, value in args.keywords}
    raw = {
        "name": args.name,
        "classes": [{"name": c, "keywords": keywords.get(c, [])} for c in args.classes],
        "crawl": {"sources": args.sources, "per_class": args.per_class, "seeds": args.seed,
                  "source_urls": dict(args.source_url), "allow_networks": args.allow_network,
                  "settings": {k: _json_value(v) for k, v in args.set}},
    }  # fmt: skip
    return _queue(args, raw, "kd3 submit crawl")


def cmd_submit_dedup(args) -> int:
    raw = {
        "name": "dedup", "pool": args.pool,
        "dedup": {"eval": args.eval, "teacher": args.teacher, "radius": args.radius,
                  "similarity": args.sim},
    }  # fmt: skip
    return _queue(args, raw, "kd3 submit dedup")


def cmd_submit_distill(args) -> int:
    raw = {
        "name": "distill", "pool": args.pool,
        "distill": {"teacher": args.teacher, "teacher_arch": args.teacher_arch, "eval": args.eval,
                    "student": args.student, "method": args.method, "epochs": args.epochs,
                    "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                    "options": {k.replace("-", "_"): _json_value(v) for k, v in args.option}},
    }  # fmt: skip
    return _queue(args, raw, "kd3 submit distill")


def cmd_submit_pipeline(args) -> int:
    return _queue(args, load_config(args.config), args.config)


def cmd_run(args) -> int:
    from workers.run_local import run_pipeline

    config = check_stages(load_config(args.config), args.config)
    settings = _settings(args)
    parent, children = run_pipeline(config, settings.artifacts, args.redis)
    print(format_summary(parent, children, settings.artifacts))
    return 0 if parent.status == "succeeded" else 1
