"""docker-compose.yml is valid, and every service's command really runs: each is started here as
a local process against a local redis-server (there is no Docker engine on this machine)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import compose
import pytest
import redis

from tests.workers.conftest import wait_for
from workers.celery_app import make_app
from workers.jobs import JobStore
from workers.local_redis import free_port, redis_server_binary
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"
PASSWORD = "test-secret"


def _compose(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD3_REDIS_PASSWORD": PASSWORD, "KD3_FLOWER_PASSWORD": PASSWORD}
    return subprocess.run(
        [str(COMPOSE), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]
)
def test_compose_files_are_valid(files):
    run = _compose(*[a for f in files for a in ("-f", f)], "config", "-q")
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="module")
def services_config() -> dict:
    run = _compose("-f", "docker-compose.yml", "config", "--format", "json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["services"]


def test_gpu_overlay_reserves_a_gpu_and_uses_the_cuda_image():
    run = _compose(
        "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", "--format", "json"
    )
    gpu = json.loads(run.stdout)["services"]["gpu-worker"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("missing", ["KD3_REDIS_PASSWORD", "KD3_FLOWER_PASSWORD"])
def test_compose_refuses_to_start_without_a_password(missing):
    env = {**os.environ, "KD3_REDIS_PASSWORD": PASSWORD, "KD3_FLOWER_PASSWORD": PASSWORD}
    env.pop(missing)
    run = subprocess.run(
        [str(COMPOSE), "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"set {missing}" in lines[0], run.stderr


def test_redis_service_runs_with_password_and_aof(services_config, tmp_path):
    service = services_config["redis"]
    command = service["command"]
    assert command[:2] == ["sh", "-c"] and "ports" not in service
    assert PASSWORD not in " ".join(command)
    port = free_port()
    # The container's data folder becomes a temp folder; everything else is the service's own.
    # `compose config` prints `$` escaped as `$$`, as in the file; the container sees `$`
    script = command[2].replace("$$", "$").replace("redis-server", str(redis_server_binary()))
    script = script.replace("--dir /data", f"--dir {tmp_path} --port {port} --bind 127.0.0.1")
    env = {**os.environ, **service["environment"]}
    proc = subprocess.Popen(
        ["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port, password=PASSWORD)
        wait_for(lambda: _pings(client), 10, "redis to answer")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
        # exec: the shell became redis-server, and its command line holds no password
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "redis-server" in argv and PASSWORD not in argv
        # the healthcheck, with the image's redis-cli replaced by the local one
        check = service["healthcheck"]["test"][1].replace(
            "redis-cli", f"{redis_server_binary().parent / 'redis-cli'} -p {port}"
        )
        assert subprocess.run(["sh", "-c", check], env=env, timeout=10).returncode == 0
        env.pop("REDISCLI_AUTH")
        assert subprocess.run(["sh", "-c", check], env=env, timeout=10).returncode != 0
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.exceptions.ConnectionError:
        return False


def _local_command(service: dict, redis_url: str, artifacts: Path) -> tuple[list[str], dict]:
    command = service["command"]
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if command[0] in ("celery", "kd3"):
        command = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    env = {**os.environ, **service.get("environment", {}), "KD3_REDIS_URL": redis_url,
           "KD3_ARTIFACTS": str(artifacts), "PYTHONPATH": str(ROOT)}  # fmt: skip
    return command, env


def test_worker_and_flower_commands_start_for_real(services_config, redis_server, tmp_path):
    settings = Settings(redis_url=redis_server.url)
    app = make_app(settings)
    procs = []
    try:
        for name in ("crawl-worker", "cpu-worker", "gpu-worker"):
            command, env = _local_command(services_config[name], redis_server.url, tmp_path)
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        expected = {"crawl", "cpu", "gpu"}
        replies = wait_for(
            lambda: (r := app.control.ping(timeout=1.0)) and {next(iter(x)).split("@")[0] for x in r} >= expected and r,
            90, "the three workers to answer a ping",
        )  # fmt: skip
        queues = app.control.inspect(timeout=2.0).active_queues()
        by_worker = {w.split("@")[0]: {q["name"] for q in qs} for w, qs in queues.items()}
        assert by_worker == {"crawl": {"crawl"}, "cpu": {"cpu"}, "gpu": {"gpu"}}, replies

        # each worker's healthcheck (a Celery ping of its own node name) passes against it
        for name in ("crawl-worker", "cpu-worker", "gpu-worker"):
            check = services_config[name]["healthcheck"]["test"]
            assert check[0] == "CMD-SHELL"
            script = (
                check[1]
                .replace("$$", "$")
                .replace("celery ", f"{Path(sys.executable).parent}/celery ")
            )
            _, env = _local_command(services_config[name], redis_server.url, tmp_path)
            env["HOSTNAME"] = socket.gethostname()  # what %h in --hostname expands to
            run = subprocess.run(["sh", "-c", script], cwd=ROOT, env=env, timeout=60)
            assert run.returncode == 0, name

        command, env = _local_command(services_config["flower"], redis_server.url, tmp_path)
        assert PASSWORD not in " ".join(command)  # basic auth comes from FLOWER_BASIC_AUTH
        port = free_port()
        command = [c if not c.startswith("--port") else f"--port={port}" for c in command]
        procs.append(subprocess.Popen(command + ["--address=127.0.0.1"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        code = wait_for(lambda: _status(url, None), 60, "flower to answer")
        assert code == 401
        assert _status(url, ("kd3", PASSWORD)) == 200
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _status(url: str, auth) -> int | None:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def test_pipeline_command_submits_the_configured_chain(
    services_config, redis_server, tmp_path, teacher_and_data
):
    """The one-shot service's command, run in a copy of the app folder; no worker listens, so
    nothing is crawled: we check what it queued, then stop it."""
    app_dir = tmp_path / "app"
    shutil.copytree(ROOT / "configs", app_dir / "configs")
    (app_dir / "teachers").mkdir()
    shutil.copy(teacher_and_data["teacher"], app_dir / "teachers" / "teacher.pt")
    command, env = _local_command(
        services_config["pipeline"], redis_server.url, tmp_path / "artifacts"
    )
    proc = subprocess.Popen(
        command, cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The first stage is queued for a crawl worker (none runs here, so nothing is crawled).
        wait_for(lambda: redis_server.client().llen("crawl") == 1, 60, "the crawl task")
        store = JobStore(redis_server.client())
        [parent] = [j for j in store.list() if j.kind == "pipeline"]
        children = [store.get(c) for c in parent.children]
        assert [c.kind for c in children] == ["crawl", "dedup", "score", "distill"]
        assert [c["name"] for c in children[0].spec["classes"][:2]] == ["airplane", "automobile"]
        # score judges the pool with the distill stage's teacher, uploaded once
        assert children[3].spec["teacher"].startswith("artifact:teachers/")
        assert children[2].spec["teacher"] == children[3].spec["teacher"]
        time.sleep(0.5)
        assert proc.poll() is None  # still following the pipeline (--wait)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_images_copy_every_package_the_project_installs(dockerfile):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    text = (ROOT / dockerfile).read_text()
    assert [p for p in packages if f"COPY {p} ./{p}" not in text] == []


def test_images_default_to_public_bases_and_indexes(services_config):
    """A user's plain `docker compose build` pulls the public images and uses pip's own index;
    stand-ins (docker/stand-in) come only through KD3_BASE_IMAGE, KD3_PIP_INDEX_ARGS and
    KD3_REDIS_IMAGE, which make compose-test sets."""
    for name in ("crawl-worker", "cpu-worker", "gpu-worker", "flower", "pipeline"):
        build = services_config[name]["build"]
        assert build["args"] == {"BASE_IMAGE": "python:3.11-slim", "PIP_INDEX_ARGS": ""}
        assert "network" not in build
    assert services_config["redis"]["image"] == "redis:7.2-alpine"
    for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.gpu"):
        text = (ROOT / dockerfile).read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}" in text
        assert "\nUSER kd3\n" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_compose_test_override_is_valid_and_publishes_flower_alone(tmp_path):
    """docker/compose-test/compose.test.yml (make compose-test) on top of docker-compose.yml."""
    env = {**os.environ, "KD3_REDIS_PASSWORD": PASSWORD, "KD3_FLOWER_PASSWORD": PASSWORD,
           "KD3_TEST_DIR": str(tmp_path)}  # fmt: skip
    run = subprocess.run(
        [str(COMPOSE), "-f", "docker-compose.yml", "-f", "docker/compose-test/compose.test.yml",
         "config", "--format", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    config = json.loads(run.stdout)
    services = config["services"]
    assert [n for n, s in services.items() if s.get("ports")] == ["flower"]
    assert services["flower"]["ports"][0]["host_ip"] == "127.0.0.1"
    assert config["networks"]["default"]["internal"] is True
    assert services["crawl-worker"]["build"]["network"] == "host"
