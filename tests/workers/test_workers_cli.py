"""The job commands a user types: submit, watch, status, jobs, artifacts, cancel (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.workers.conftest import worker_env
from workers.artifacts import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]


def _kd3(settings, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=worker_env(settings))  # fmt: skip


def test_submit_watch_status_jobs_artifacts_cancel(services, start_worker, teacher_and_data):
    _server, settings = services
    data = teacher_and_data
    submitted = _kd3(settings, "submit", "distill", "--teacher", str(data["teacher"]), "--pool",
                     str(data["pool"]), "--eval", str(data["eval"]), "--epochs", "2",
                     "--batch-size", "64", "--tau", "0.9")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("distill-")

    queued = _kd3(settings, "submit", "distill", "--teacher", str(data["teacher"]), "--pool",
                  str(data["pool"]), "--epochs", "1")  # fmt: skip
    second = queued.stdout.strip()
    cancelled = _kd3(settings, "cancel", second)
    assert cancelled.stdout.strip() == f"{second}: cancelled"

    start_worker("gpu")
    watched = _kd3(settings, "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    assert "running" in watched.stdout and "succeeded" in watched.stdout
    assert "status     succeeded" in watched.stdout

    status = _kd3(settings, "status", job_id)
    assert (
        status.returncode == 0 and '"tau": 0.9' in status.stdout and "attempts   1" in status.stdout
    )
    listing = _kd3(settings, "jobs")
    rows = {line.split()[0]: line.split()[2] for line in listing.stdout.splitlines()[1:]}
    assert rows == {job_id: "succeeded", second: "cancelled"}

    artifacts = _kd3(settings, "artifacts", job_id)
    lines = dict(line.split(maxsplit=1) for line in artifacts.stdout.splitlines())
    assert set(lines) == {"student.pt", "metrics.jsonl", "report.png"}
    assert Path(lines["student.pt"]) == Path(
        ArtifactStore(settings.artifacts).url(f"jobs/{job_id}/student.pt")
    )
    assert Path(lines["student.pt"]).exists()

    missing = _kd3(settings, "status", "distill-nope")
    assert missing.returncode != 0 and "no job 'distill-nope'" in missing.stderr


def test_submit_refuses_bad_settings_before_queueing(services, teacher_and_data):
    _server, settings = services
    data = teacher_and_data
    run = _kd3(settings, "submit", "distill", "--teacher", str(data["teacher"]), "--pool",
               str(data["pool"]), "--method", "magic")  # fmt: skip
    assert (
        run.returncode == 2
        and run.stderr.count("\n") == 1
        and "argument --method: invalid choice: 'magic'" in run.stderr
    )
    # job specs are data: no setting outside the allow-lists, none unbounded
    teacher_pool = ["--teacher", str(data["teacher"]), "--pool", str(data["pool"])]
    for args, message in (
        (["crawl", "--name", "x", "--classes", "cat", "-s", "TELNETCONSOLE_ENABLED=true"],
         "kd3 submit: error: kd3 submit crawl: --set: TELNETCONSOLE_ENABLED: not an allowed"),
        (["distill", *teacher_pool, "--state-path", "/etc"],
         "error: unrecognized arguments: --state-path /etc"),
        (["distill", *teacher_pool, "--infer-batch-size", "1000000000"],
         "kd3 submit: error: kd3 submit distill: --infer-batch-size: Input should be less"),
        (["crawl", "--name", "x", "--classes", "cat", "--sources", "myspace"],
         "kd3 submit: error: kd3 submit crawl: --sources: unknown sources ['myspace']"),
    ):  # fmt: skip
        run = _kd3(settings, "submit", *args)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert message in run.stderr, run.stderr
    run = _kd3(
        settings, "submit", "distill", "--teacher", "/nonexistent.pt", "--pool", str(data["pool"])
    )
    assert run.returncode == 2 and "/nonexistent.pt" in run.stderr
    assert _kd3(settings, "jobs").stdout.count("\n") == 1  # only the header: nothing was queued


def test_submit_refuses_references_outside_the_store(services, tmp_path):
    _server, settings = services
    victim = Path(settings.artifacts).parent / "victim_pool"
    victim.mkdir(parents=True)
    (victim / "manifest.parquet").write_bytes(b"rows")
    for args in (["dedup", "--pool", "artifact:../victim_pool"],
                 ["dedup", "--pool", "artifact:pools/../../victim_pool"],
                 ["crawl", "--name", "..", "--classes", "cat"]):  # fmt: skip
        run = _kd3(settings, "submit", *args)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith("kd3 submit: error: ") and "'..'" in run.stderr, run.stderr
    assert (victim / "manifest.parquet").read_bytes() == b"rows"
    assert sorted(p.name for p in victim.iterdir()) == ["manifest.parquet"]
    assert _kd3(settings, "jobs").stdout.count("\n") == 1  # nothing was queued
