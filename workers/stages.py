"""The stage functions a job runs, shared by the Celery tasks and `kd3 run` (in-process).

Each takes the job's spec (JSON-able dict) and a JobContext, and returns a StageResult. Inputs in
a spec are either local paths the worker can read or `artifact:<key>` references into the
artifact store; outputs go to the store under jobs/<job id>/ (pools under pools/<name>).
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.runtime import JobContext, JobStopped, StageResult

ARTIFACT_PREFIX = "artifact:"


def resolve(ctx: JobContext, ref: str) -> Path:
    """A spec input as a local path (downloaded from the artifact store when needed)."""
    if ref.startswith(ARTIFACT_PREFIX):
        return ctx.artifacts.local_path(ref[len(ARTIFACT_PREFIX) :])
    return Path(ref)


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

    _limit_threads()
    teacher, meta = load_model(resolve(ctx, spec["teacher"]), arch=spec.get("teacher_arch"))
    pool = load_images(resolve(ctx, spec["pool"]), meta.input_size)
    eval_set = (
        load_images(resolve(ctx, spec["eval"]), meta.input_size) if spec.get("eval") else None
    )
    out_key = f"jobs/{ctx.job_id}"
    out = ctx.artifacts.work_dir(out_key)

    def on_event(event: dict) -> bool:
        if event["event"] == "epoch":
            m = event["metrics"]
            ctx.progress(
                {"stage": "distill", "epoch": m["epoch"], "epochs": spec["train"].get("epochs"),
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
    return StageResult(metrics=result.final, artifacts=artifacts)


STAGES = {"distill": run_distill}
