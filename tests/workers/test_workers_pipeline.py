"""Whole pipelines: crawl -> dedup -> score -> distill on real crawl, cpu and gpu workers, two at once,
crawling a generated web on 127.0.0.1; and the offline demo at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crawler.localweb import LocalWeb
from tests.workers.conftest import wait_final
from workers.artifacts import ArtifactStore
from workers.config import CrawlSpec, DedupSpec, DistillSpec, PipelineConfig, ScoreSpec
from workers.demo import world
from workers.demo.run import serve
from workers.jobs import JobStore
from workers.pipeline import create_pipeline
from workers.submit import enqueue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small teacher for the shape classes, an evaluation split, and a web to crawl."""
    import torch

    from distill.data import load_images
    from distill.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shapes")
    names = np.array(world.CLASSES)
    x, y = world.original_dataset(240, seed=0)
    x_eval, y_eval = world.original_dataset(80, seed=1)
    np.savez(root / "train.npz", x=x, y=y, class_names=names)
    np.savez(root / "eval.npz", x=x_eval, y=y_eval, class_names=names)
    cfg = TrainConfig(method="supervised", student="resnet8", epochs=1, batch_size=64)
    Trainer(cfg, load_images(root / "train.npz"), root / "t", log=lambda _m: None).run(
        final_name="teacher.pt"
    )
    web = world.build_web(6, x_eval, seed=2, eval_copies=3)
    with serve(web) as local:
        yield {
            "teacher": root / "t" / "teacher.pt",
            "eval": root / "eval.npz",
            "web": local,
            "truth": web,
        }


def _config(name: str, shapes: dict) -> PipelineConfig:
    web: LocalWeb = shapes["web"]
    return PipelineConfig(
        name=name,
        classes=[{"name": c} for c in world.CLASSES],
        crawl=CrawlSpec(
            sources=["site"], seeds=[web.url("/")], per_class=0, allow_networks=["127.0.0.0/8"]
        ),
        dedup=DedupSpec(eval=str(shapes["eval"]), use_teacher=False),
        score=ScoreSpec(),  # with the distill stage's teacher
        distill=DistillSpec(
            teacher=str(shapes["teacher"]), epochs=1, batch_size=32, eval=str(shapes["eval"])
        ),
    )


def test_two_pipelines_at_once_on_crawl_cpu_and_gpu_workers(services, start_worker, shapes):
    server, settings = services
    store = JobStore(server.client())
    artifacts = ArtifactStore(settings.artifacts)
    parents = [create_pipeline(store, artifacts, _config(name, shapes), lambda j: enqueue(settings, j))
               for name in ("first", "second")]  # fmt: skip
    for queue in ("crawl", "cpu", "gpu"):
        start_worker(queue)
    for parent in parents:
        done = wait_final(store, parent.id, timeout=300)
        children = [store.get(c) for c in done.children]
        assert done.status == "succeeded", [(c.kind, c.status, c.error) for c in children]
        crawl, dedup, score, distill = children
        assert [c.status for c in children] == ["succeeded"] * 4
        stats = server.client().hgetall(f"kd3:crawl:{crawl.metrics['crawl_id']}:stats")
        assert int(stats[b"images_stored"]) == crawl.metrics["images_stored"] > 20
        assert dedup.metrics["test_overlap"] >= 3  # the evaluation images hidden in the web
        # the teacher's yield per class, before distillation; its page in the pool
        assert [c["name"] for c in score.metrics["classes"]] == list(world.CLASSES)
        kept = sum(c["kept"] for c in score.metrics["classes"])
        assert score.metrics["scored"] == kept > 0 and score.metrics["useful"] <= kept
        assert (Path(settings.artifacts) / score.artifacts["score_page"]).stat().st_size > 0
        assert (Path(settings.artifacts) / distill.artifacts["student.pt"]).exists()
    pools = {store.get(p.children[0]).artifacts["pool"] for p in parents}
    assert pools == {"pools/first", "pools/second"}


def test_demo_quick_preset_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--preset", "quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"teacher", "kd", "kd3"}
    assert all(0 <= v <= 1 for v in summary["accuracy"].values())
    assert int(summary["crawl"]["images_stored"]) > 50
    assert summary["pool_by_truth"]["eval-copy"].get("test_overlap", 0) >= 10
    html = (out / "report.html").read_text()
    assert "KD3 student" in html and "report.png" in html
    assert "kd3 demo: accuracy on the held-out evaluation split" in run.stdout
