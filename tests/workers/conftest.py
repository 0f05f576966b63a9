"""Real Celery worker processes against a real redis-server, and a small teacher to distil."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distill.synthetic import write_npz
from workers.jobs import TERMINAL, JobStore
from workers.local_redis import RedisServer
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def teacher_and_data(tmp_path_factory):
    """A tiny teacher trained on generated data, a web-like pool and an eval set (npz)."""
    import torch

    from distill.data import load_images
    from distill.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher")
    train = write_npz(root / "train.npz", 256, size=16, seed=1)
    pool = write_npz(root / "pool.npz", 512, size=16, seed=2, distractors=64, labels=False)
    evaluation = write_npz(root / "eval.npz", 128, size=16, seed=3)
    cfg = TrainConfig(method="supervised", student="resnet8", epochs=2, batch_size=64, lr=0.05)
    Trainer(cfg, load_images(train, 16), root / "run", log=lambda _m: None).run(
        final_name="teacher.pt"
    )
    return {"teacher": root / "run" / "teacher.pt", "pool": pool, "eval": evaluation}


@pytest.fixture
def services(tmp_path):
    """redis-server with AOF (as in compose) and the settings a worker and the CLI share."""
    with RedisServer(data_dir=tmp_path / "redis", appendonly=True) as server:
        settings = Settings(
            redis_url=server.url,
            artifacts=str(tmp_path / "artifacts"),
            lease_ttl=3.0,
            recover_interval=0.5,
        )
        yield server, settings


def worker_env(settings: Settings) -> dict:
    return {
        **os.environ,
        "KD3_REDIS_URL": settings.redis_url,
        "KD3_ARTIFACTS": settings.artifacts,
        "KD3_LEASE_TTL": str(settings.lease_ttl),
        "KD3_RECOVER_INTERVAL": str(settings.recover_interval),
        "KD3_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


class Worker:
    """A `celery worker` process, the command the compose services run."""

    def __init__(self, settings: Settings, queues: str, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
             "--pool", "solo", "--concurrency", "1", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO", "-n", f"test-{queues}-{time.monotonic_ns()}@%h"],
            cwd=ROOT, env=worker_env(settings), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(services, tmp_path):
    _server, settings = services
    started: list[Worker] = []

    def start(queues: str = "gpu") -> Worker:
        worker = Worker(settings, queues, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_final(store: JobStore, job_id: str, timeout: float = 120):
    return wait_for(
        lambda: (job := store.get(job_id)).status in TERMINAL and job, timeout, f"{job_id} to end"
    )
