"""A pipeline is crawl -> dedup -> score -> distill, as job records linked by `next` under a
parent.

Each job enqueues the next when it succeeds (rather than a Celery chain), so a job that is
requeued after its worker died keeps its place in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from dedup.options import DedupOptions
from steer.options import ScoreOptions
from workers.artifacts import PREFIX, ArtifactStore
from workers.config import PipelineConfig
from workers.jobs import Job, JobStore
from workers.references import check_name, parse_ref, pool_key


def plan(config: PipelineConfig, artifacts: ArtifactStore) -> list[tuple[str, dict]]:
    """The (kind, spec) of each stage, with local inputs uploaded to the artifact store; every
    reference is checked here too, so a bad one fails at submit time."""
    stages: list[tuple[str, dict]] = []
    teacher_ref = None
    if config.distill is not None:
        teacher_ref = PREFIX + artifacts.put_teacher(config.distill.teacher)
    # The teacher that judges the pool (score, loop): score's own, else the distill stage's.
    judge = {"teacher": teacher_ref, "teacher_arch": config.distill and config.distill.teacher_arch}
    if config.score is not None and config.score.teacher is not None:
        judge = {"teacher": PREFIX + artifacts.put_teacher(config.score.teacher),
                 "teacher_arch": config.score.teacher_arch}  # fmt: skip
    if config.crawl is not None:
        pool = pool_key(f"pools/{check_name(config.name, 'name')}")
        stages.append(("crawl", {
            "classes": [c.model_dump() for c in config.classes], "pool_key": pool,
            "options": config.crawl.model_dump(mode="json"),
            **({"loop": config.loop.model_dump(mode="json"), **judge} if config.loop else {}),
        }))  # fmt: skip
        pool_ref = PREFIX + pool
    else:
        pool_ref = artifacts.upload_input(config.pool)
    if config.dedup is not None:
        pool_key(parse_ref(pool_ref, "pool"), "pool")  # dedup rewrites it: pools/NAME only
        d = config.dedup
        embed_with = teacher_ref if d.use_teacher and d.embeddings else None
        if d.teacher:
            embed_with = PREFIX + artifacts.put_teacher(d.teacher)
        stages.append(("dedup", {
            "pool": pool_ref, "eval": artifacts.upload_input(d.eval), "teacher": embed_with,
            "options": d.model_dump(include=set(DedupOptions.model_fields)),
        }))  # fmt: skip
    if config.score is not None:
        pool_key(parse_ref(pool_ref, "pool"), "pool")  # score writes columns: pools/NAME only
        options = config.score.model_dump(mode="json", include=set(ScoreOptions.model_fields))
        stages.append(("score", {"pool": pool_ref, **judge, "options": options}))
    if config.distill is not None:
        d = config.distill
        stages.append(("distill", {
            "teacher": teacher_ref, "teacher_arch": d.teacher_arch, "pool": pool_ref,
            "eval": artifacts.upload_input(d.eval), "options": d.train_options(),
        }))  # fmt: skip
    return stages


def create_pipeline(
    store: JobStore,
    artifacts: ArtifactStore,
    config: PipelineConfig,
    enqueue: Callable[[Job], None],
) -> Job:
    """Create the parent and child records (last child first, to link `next`); queue the first.
    A config with one stage makes one job, without a parent."""
    stages = plan(config, artifacts)
    if len(stages) == 1:
        kind, spec = stages[0]
        job = store.create(kind, spec)
        enqueue(job)
        return job
    parent = store.create("pipeline", {"config": config.model_dump(mode="json")})
    next_id, children = "", []
    for kind, spec in reversed(stages):
        child = store.create(kind, spec, next_job=next_id, parent=parent.id)
        next_id = child.id
        children.insert(0, child.id)
    store.set_children(parent.id, children)
    enqueue(store.get(children[0]))
    return store.get(parent.id)
