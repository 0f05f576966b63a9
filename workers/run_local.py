"""`kd3 run CONFIG`: the whole pipeline in this process, without a broker.

The same job records and stage functions as on the workers; Redis (for job records and crawl
stats) is $KD3_REDIS_URL when given, else a redis-server started here for the run.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

from common.services import redis_client
from workers.artifacts import ArtifactStore
from workers.config import PipelineConfig
from workers.jobs import Job, JobStore
from workers.local_redis import RedisServer
from workers.pipeline import create_pipeline
from workers.runtime import execute_job


def run_pipeline(
    config: PipelineConfig, artifacts_root: str | Path, redis_url: str | None = None,
    log=lambda msg: print(msg, file=sys.stderr, flush=True),
) -> tuple[Job, list[Job]]:  # fmt: skip
    """Run every stage in order; returns the top record and the records of its stages."""
    from workers.stages import STAGES

    with contextlib.ExitStack() as stack:
        if redis_url is None:
            server = stack.enter_context(RedisServer(data_dir=Path(artifacts_root) / "redis"))
            redis_url = server.url
        store = JobStore(redis_client(redis_url))
        artifacts = ArtifactStore(artifacts_root)
        queue: list[Job] = []
        parent = create_pipeline(store, artifacts, config, queue.append)
        _say_which_pool(config, store, parent, artifacts, log)
        while queue:
            job = queue.pop(0)
            log(f"[{job.kind}] {job.id} starting")
            start = time.perf_counter()
            with _live_progress(store, job.id):
                outcome = execute_job(store, artifacts, job.id, STAGES[job.kind], lease_ttl=120,
                                      enqueue=queue.append, redis_url=redis_url)  # fmt: skip
            done = store.get(job.id)
            log(f"[{job.kind}] {outcome} in {time.perf_counter() - start:.0f} s"
                + (f": {done.error}" if done.error else ""))  # fmt: skip
        top = store.get(parent.id)
        # A one-stage config makes a single job: it is its own (only) stage.
        children = [store.get(c) for c in top.children] if top.kind == "pipeline" else [top]
        return top, children


def _say_which_pool(config, store, parent, artifacts, log) -> None:
    """Dedup and score rewrite the manifest of the pool they are given: a local pool is first
    copied into the artifact store (named by its content), and the copy is what changes."""
    if config.pool is None or config.pool.startswith("artifact:"):
        return
    jobs = [store.get(c) for c in parent.children] if parent.kind == "pipeline" else [parent]
    writers = [job for job in jobs if job.kind in ("dedup", "score")]
    if not writers:
        return
    copy = artifacts.url(writers[0].spec["pool"].removeprefix("artifact:"))
    kinds = " and ".join(job.kind for job in writers)
    log(f"{kinds} write to {copy}, a copy of {config.pool}; {config.pool} itself is not changed")


@contextlib.contextmanager
def _live_progress(store: JobStore, job_id: str):
    """On a terminal, a progress bar of the running stage (what `kd3 watch` shows), drawn by a
    thread that follows the job's events while this one runs it."""
    if not sys.stderr.isatty():
        yield
        return
    from workers.jobs_cli import follow

    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(store, job_id, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
