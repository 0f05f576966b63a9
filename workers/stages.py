"""The stage functions a job runs, shared by the Celery tasks and `kd3 run` (in-process).

Each takes the job's spec (JSON-able dict) and a JobContext, and returns a StageResult. Inputs in
a spec are `artifact:<key>` references into the artifact store (or local paths, only under the
worker's KD3_LOCAL_ROOTS); outputs go to the store under jobs/<job id>/ (pools under
pools/<name>). Every key, id and path is checked by workers.references before it is used.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.options import parse
from workers.references import check_name, job_key, parse_ref, pool_key
from workers.runtime import JobContext, JobStopped, StageResult


def resolve(ctx: JobContext, ref: str) -> Path:
    """A spec input as a local path (downloaded from the artifact store when needed); refused
    when it could reach outside the store or the worker's allowed local roots."""
    return ctx.artifacts.resolve(ref)


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(
        int(os.environ.get("KD3_TORCH_THREADS", max(1, (os.cpu_count() or 2) // 2)))
    )


def run_distill(spec: dict, ctx: JobContext) -> StageResult:
    from distill.checkpoints import load_model
    from distill.data import load_images
    from distill.errors import TrainingCancelled
    from distill.trainer import TrainConfig, Trainer

    out_key = job_key(ctx.job_id)
    _limit_threads()
    teacher, meta = load_model(resolve(ctx, spec["teacher"]), arch=spec.get("teacher_arch"))
    pool = load_images(resolve(ctx, spec["pool"]), meta.input_size)
    eval_set = (
        load_images(resolve(ctx, spec["eval"]), meta.input_size) if spec.get("eval") else None
    )
    out = ctx.artifacts.work_dir(out_key)

    def on_event(event: dict) -> bool:
        if event["event"] == "epoch":
            m = event["metrics"]
            ctx.progress(
                {"stage": "distill", "epoch": m["epoch"], "epochs": spec["train"].get("epochs"),
                 "step": m["steps"], "steps": m["steps"],  # the epoch is complete
                 "eval_accuracy": m.get("eval_accuracy"), "loss": m["losses"].get("loss")},
                force=True,
            )  # fmt: skip
            ctx.artifacts.sync_up(out, out_key)  # checkpoints reach the store every epoch
        else:
            ctx.progress({"stage": "distill", **{k: v for k, v in event.items() if k != "event"}})
        return ctx.should_stop()

    trainer = Trainer(
        TrainConfig(**spec["train"]), pool, out, teacher, meta, eval_set,
        device=spec.get("device"), step_callback=on_event,
    )  # fmt: skip
    try:
        result = trainer.run(resume=trainer.state_path.exists())
    except TrainingCancelled as exc:
        raise JobStopped(str(exc)) from None
    ctx.artifacts.sync_up(out, out_key)
    artifacts = {
        name: f"{out_key}/{name}"
        for name in ("student.pt", "metrics.jsonl", "report.png")
        if (out / name).exists()
    }
    return StageResult(
        metrics={**result.final, "method_note": trainer.method_note()}, artifacts=artifacts
    )


def run_crawl(spec: dict, ctx: JobContext) -> StageResult:
    """Crawl in a child process (a Twisted reactor runs once per process). The crawl id is the
    job id, so a redelivered job resumes the same crawl from Scrapy's job directory."""
    import redis

    from crawler.stats import read_stats

    crawl_id = check_name(spec.get("crawl_id") or ctx.job_id, "crawl_id")
    pool = pool_key(spec["pool_key"], "pool_key")
    out = ctx.artifacts.work_dir(pool)
    args = [sys.executable, "-m", "crawler.run", "--classes", ",".join(spec["classes"]),
            "--out", str(out), "--sources", ",".join(spec["sources"]),
            "--per-class", str(spec["per_class"]), "--redis", ctx.redis_url,
            "--crawl-id", crawl_id]  # fmt: skip
    for name, words in spec.get("keywords", {}).items():
        if words:
            args += ["--keywords", f"{name}={';'.join(words)}"]
    args += [a for seed in spec.get("seeds", []) for a in ("--seed", seed)]
    args += [
        a for k, v in spec.get("source_urls", {}).items() for a in ("--source-url", f"{k}={v}")
    ]
    args += [a for net in spec.get("allow_networks", []) for a in ("--allow-network", net)]
    args += [a for k, v in spec.get("hosts", {}).items() for a in ("--host", f"{k}={v}")]
    args += [a for k, v in spec.get("settings", {}).items() for a in ("--set", f"{k}={_json(v)}")]

    client = redis.Redis.from_url(ctx.redis_url)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopping_since = None
    while process.poll() is None:
        time.sleep(0.5)
        stats = _safe(lambda: read_stats(client, crawl_id), {})
        ctx.progress({"stage": "crawl", "crawl_id": crawl_id,
                      "images_stored": int(stats.get("images_stored", 0))})  # fmt: skip
        if ctx.should_stop() and stopping_since is None:
            stopping_since = time.monotonic()
            process.send_signal(signal.SIGINT)  # Scrapy stops gracefully; its job dir stays
        elif stopping_since and time.monotonic() - stopping_since > 30:
            process.kill()
    out_text, err_text = process.communicate()
    if stopping_since is not None:
        raise JobStopped("cancelled during the crawl")
    if process.returncode != 0:
        lines = [line for line in err_text.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"crawler exited with {process.returncode}")
    ctx.artifacts.sync_up(out, pool)
    stats = _safe(lambda: read_stats(client, crawl_id), {})
    summary = out_text.strip().splitlines()[-1] if out_text.strip() else ""
    return StageResult(
        metrics={"crawl_id": crawl_id, "summary": summary,
                 **{k: int(v) for k, v in stats.items() if v.isdigit()}},
        artifacts={"pool": pool},
    )  # fmt: skip


def _json(value) -> str:
    import json

    return json.dumps(value)


def _safe(read, default):
    import redis

    try:
        return read()
    except redis.exceptions.ConnectionError:
        return default


def run_dedup(spec: dict, ctx: JobContext) -> StageResult:
    """Mark duplicates and evaluation overlaps in the pool's manifest (in the store)."""
    from dedup.options import DedupOptions
    from dedup.stage import run_dedup as dedup_stage
    from distill.features import load_feature_extractor

    options = parse(DedupOptions, spec.get("options", {}), "dedup job spec", flags=False)
    pool = pool_key(parse_ref(spec["pool"], "pool"))  # dedup rewrites it: artifact:pools/NAME
    _limit_threads()
    pool_dir = ctx.artifacts.work_dir(pool)
    ctx.progress({"stage": "dedup", "pool": pool}, force=True)
    report = dedup_stage(
        pool_dir,
        options,
        eval_set=resolve(ctx, spec["eval"]) if spec.get("eval") else None,
        teacher=resolve(ctx, spec["teacher"]) if spec.get("teacher") else None,
        teacher_loader=load_feature_extractor,
    )
    ctx.artifacts.sync_up(pool_dir, pool)
    return StageResult(
        metrics={"counts": report["counts"], "groups": report["groups"],
                 **{k: int(v) for k, v in report["counts"].items()}},
        artifacts={"pool": pool, "dedup_report": f"{pool}/dedup/report.json",
                   "contact_sheet": f"{pool}/dedup/contact_sheet.png"},
    )  # fmt: skip


STAGES = {"crawl": run_crawl, "dedup": run_dedup, "distill": run_distill}
