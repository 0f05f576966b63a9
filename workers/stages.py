"""The stage functions a job runs, shared by the Celery tasks and `kd3 run` (in-process).

Each takes the job's spec (JSON-able dict) and a JobContext, and returns a StageResult. Inputs in
a spec are `artifact:<key>` references into the artifact store (or local paths, only under the
worker's KD3_LOCAL_ROOTS); outputs go to the store under jobs/<job id>/ (pools under
pools/<name>). Every key, id and path is checked by workers.references before it is used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common.files import atomic_write
from common.options import OptionsError, parse
from common.services import redis_client
from crawler.errors import CrawlError
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


def spec_options(kind: str, spec: dict):
    """The options a job of `kind` runs with: its spec's `options`, checked by the stage's
    options model (the one `kd3 <stage>`, `kd3 submit` and the YAML config use)."""
    from crawler.options import CrawlOptions
    from dedup.options import DedupOptions
    from distill.options import DistillOptions
    from steer.options import ScoreOptions

    model = {
        "crawl": CrawlOptions,
        "dedup": DedupOptions,
        "score": ScoreOptions,
        "distill": DistillOptions,
    }[kind]
    if "options" not in spec:  # queued by a kd3 that spread them over the spec: never guess
        raise OptionsError(
            f"{kind} job spec has no 'options' (queued by an older kd3?); submit it again"
        )
    return parse(model, spec["options"], f"{kind} job spec", flags=False)


def run_distill(spec: dict, ctx: JobContext) -> StageResult:
    from distill.errors import TrainingCancelled
    from distill.stage import run_distill as distill_stage
    from distill.stage import saved_run

    options = spec_options("distill", spec)
    out_key = job_key(ctx.job_id)
    _limit_threads()
    out = ctx.artifacts.work_dir(out_key)

    def on_event(event: dict) -> bool:
        if event["event"] == "epoch":
            m = event["metrics"]
            ctx.progress(
                {"stage": "distill", "epoch": m["epoch"], "epochs": options.epochs,
                 "step": m["steps"], "steps": m["steps"],  # the epoch is complete
                 "eval_accuracy": m.get("eval_accuracy"), "loss": m["losses"].get("loss")},
                force=True,
            )  # fmt: skip
            ctx.artifacts.sync_up(out, out_key)  # checkpoints reach the store every epoch
        else:
            ctx.progress({"stage": "distill", **{k: v for k, v in event.items() if k != "event"}})
        return ctx.should_stop()

    try:
        result = distill_stage(
            options,
            teacher=resolve(ctx, spec["teacher"]),
            pool=resolve(ctx, spec["pool"]),
            eval_set=resolve(ctx, spec["eval"]) if spec.get("eval") else None,
            out=out,
            teacher_load=_teacher_load(spec),
            resume=saved_run(out),  # a requeued job continues from its last epoch
            on_event=on_event,
            log=lambda message: ctx.progress({"stage": "distill", "note": message}, force=True),
        )
    except TrainingCancelled as exc:
        raise JobStopped(str(exc)) from None
    ctx.artifacts.sync_up(out, out_key)
    artifacts = {
        name: f"{out_key}/{name}"
        for name in ("student.pt", "metrics.jsonl", "report.png")
        if (out / name).exists()
    }
    return StageResult(
        metrics={**result.final, "method_note": result.method_note}, artifacts=artifacts
    )


def run_crawl(spec: dict, ctx: JobContext) -> StageResult:
    """Crawl in a child process (a Twisted reactor runs once per process) that runs the same
    CrawlJob as `kd3 crawl`. The crawl id is the job id, so a redelivered job resumes the same
    crawl from its Scrapy job directory. A spec with `loop` (and the judging `teacher`) runs
    the crawl loop instead (steer.loop: rounds <id>-r1, -r2, ..., each its own crawl)."""
    from crawler.options import CrawlJob
    from crawler.stats import read_stats

    pool = pool_key(spec["pool_key"], "pool_key")  # references first, before anything else
    crawl_id = check_name(spec.get("crawl_id") or ctx.job_id, "crawl_id")
    out = ctx.artifacts.work_dir(pool)
    job = parse(CrawlJob, {
        "classes": spec["classes"], "options": spec_options("crawl", spec), "out": str(out),
        "redis_url": ctx.redis_url,
        "crawl_id": crawl_id,
    }, "crawl job spec", flags=False)  # fmt: skip
    job_file = out.parent / f".{out.name}.crawl-{job.crawl_id}.json"
    atomic_write(job_file, job.model_dump_json().encode())
    client = redis_client(ctx.redis_url)
    command = [sys.executable, "-m", "crawler.run", "--job", str(job_file)]
    if spec.get("loop") is not None:
        from steer.options import LoopOptions

        loop = parse(LoopOptions, spec["loop"], "crawl job spec: loop", flags=False)
        command = [sys.executable, "-m", "steer.loop", "--job", str(job_file), "--teacher",
                   str(resolve(ctx, spec["teacher"])), "--options", loop.model_dump_json()]  # fmt: skip
        command += ["--teacher-arch", spec["teacher_arch"]] if spec.get("teacher_arch") else []
    # Output goes to files, not pipes: Scrapy logs a lot, and a full pipe would block the child.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True)
        stopping_since = _follow_crawl(
            process, ctx, client, job.crawl_id, loop=spec.get("loop") is not None
        )
        out_text, err_text = _read_back(out_file), _read_back(err_file)
    job_file.unlink(missing_ok=True)
    if stopping_since is not None:
        raise JobStopped("cancelled during the crawl")
    if process.returncode != 0:
        lines = [line for line in err_text.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"crawler exited with {process.returncode}"
        if process.returncode == 2:  # a user error, already one line
            raise CrawlError(last.removeprefix("crawl: error: "))
        raise RuntimeError(last)
    ctx.artifacts.sync_up(out, pool)
    summary = out_text.strip().splitlines()[-1] if out_text.strip() else ""
    if spec.get("loop") is not None:
        return _loop_result(out, job.crawl_id, pool, summary)
    stats = _safe(lambda: read_stats(client, job.crawl_id), {})
    return StageResult(
        metrics={"crawl_id": job.crawl_id, "summary": summary,
                 **{k: int(v) for k, v in stats.items() if v.isdigit()}},
        artifacts={"pool": pool},
    )  # fmt: skip


def _follow_crawl(process, ctx: JobContext, client, crawl_id: str, loop: bool) -> float | None:
    """Report the crawl's progress (a loop's: its current round's) until the child ends; on
    cancel, stop it (SIGINT, then kill after 30 s). Returns when the stop began, or None when
    it was not asked to stop."""
    from crawler.stats import read_stats

    stopping_since = None
    while process.poll() is None:
        time.sleep(0.5)
        current, extra = crawl_id, {}
        if loop:  # the round after the ones the loop has recorded
            done = _safe(lambda: client.hget(f"kd3:crawl:{crawl_id}:loop", "rounds"), None)
            extra = {"round": int(done or 0) + 1}
            current = f"{crawl_id}-r{extra['round']}"
        stats = _safe(lambda c=current: read_stats(client, c), {})
        ctx.progress({"stage": "crawl", "crawl_id": current, **extra,
                      "images_stored": int(stats.get("images_stored", 0))})  # fmt: skip
        if ctx.should_stop() and stopping_since is None:
            stopping_since = time.monotonic()
            process.send_signal(signal.SIGINT)  # Scrapy stops gracefully; its job dir stays
        elif stopping_since and time.monotonic() - stopping_since > 30:
            process.kill()
    return stopping_since


def _loop_result(out: Path, crawl_id: str, pool: str, summary: str) -> StageResult:
    """A crawl loop's metrics, from the loop.json it wrote: per round what it stored, and the
    useful images per class after the last round."""
    record = json.loads((out / "crawls" / crawl_id / "loop.json").read_text())
    rounds = record["rounds"]
    return StageResult(
        metrics={"crawl_id": crawl_id, "summary": summary, "rounds": len(rounds),
                 "stopped": record["stopped"],
                 "images_stored": sum(r["stored"] for r in rounds),
                 "requests": sum(r["requests"] for r in rounds),
                 "stored_per_round": [r["stored"] for r in rounds],
                 "useful": rounds[-1]["useful"] if rounds else {}},
        artifacts={"pool": pool, "loop": f"{pool}/crawls/{crawl_id}/loop.json"},
    )  # fmt: skip


def _read_back(file) -> str:
    file.seek(0)
    return file.read()


def _safe(read, default):
    import redis

    try:
        return read()
    except redis.exceptions.ConnectionError:
        return default


def _pool_stage(kind: str, spec: dict, ctx: JobContext):
    """The start of a stage that rewrites a pool of the store (dedup, score): the pool's key
    (artifact:pools/NAME only), the stage's options, and the pool's local folder."""
    pool = pool_key(parse_ref(spec["pool"], "pool"))
    options = spec_options(kind, spec)
    _limit_threads()
    pool_dir = ctx.artifacts.work_dir(pool)
    ctx.progress({"stage": kind, "pool": pool}, force=True)
    return pool, options, pool_dir


def _teacher_load(spec: dict) -> dict | None:
    """load_model's keywords for the spec's teacher: its architecture, for a bare state_dict."""
    return {"arch": spec["teacher_arch"]} if spec.get("teacher_arch") else None


def run_dedup(spec: dict, ctx: JobContext) -> StageResult:
    """Mark duplicates and evaluation overlaps in the pool's manifest (in the store)."""
    from dedup.stage import run_dedup as dedup_stage
    from distill.features import load_feature_extractor

    pool, options, pool_dir = _pool_stage("dedup", spec, ctx)
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


def run_score(spec: dict, ctx: JobContext) -> StageResult:
    """The teacher's columns in the pool's manifest (in the store), and its per-class yield."""
    from steer.report import write_report
    from steer.score import score_pool

    pool, options, pool_dir = _pool_stage("score", spec, ctx)
    result = score_pool(
        pool_dir,
        resolve(ctx, spec["teacher"]),
        options,
        teacher_load=_teacher_load(spec),
        log=lambda message: ctx.progress({"stage": "score", "note": message}, force=True),
    )
    write_report(result)
    ctx.artifacts.sync_up(pool_dir, pool)
    return StageResult(
        metrics={
            "scored": result.scored_now,
            "useful": sum(c.useful for c in result.classes),
            "classes": [asdict(c) for c in result.classes],
            "unreadable": len(result.unreadable),
        },
        artifacts={"pool": pool, "score_report": f"{pool}/score/report.json",
                   "score_page": f"{pool}/score/report.html"},
    )  # fmt: skip


STAGES = {"crawl": run_crawl, "dedup": run_dedup, "score": run_score, "distill": run_distill}
