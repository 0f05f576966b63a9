"""The artifact store on a local folder and on a non-local fsspec filesystem (memory://), and the
checks every key, id and path from a job spec goes through."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from pool import NewImage, Pool
from tests.conftest import make_image_bytes
from workers.artifacts import PREFIX, ArtifactError, ArtifactStore
from workers.config import DedupSpec, PipelineConfig


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    root = (
        str(tmp_path / "store") if request.param == "local" else f"memory://kd3-{uuid.uuid4().hex}"
    )
    return ArtifactStore(root, cache_dir=tmp_path / "cache")


def test_inputs_are_uploaded_once_and_resolved_on_a_worker(store, tmp_path):
    pool = Pool.create(tmp_path / "pets")
    pool.add([NewImage(make_image_bytes(i), url=f"u{i}") for i in range(3)])
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights")

    pool_ref = store.upload_input(str(pool.root))
    assert pool_ref.startswith(PREFIX + "pools/pets-") and store.upload_input(pool_ref) == pool_ref
    assert store.upload_input(str(pool.root)) == pool_ref  # same content, same key
    key = store.put_teacher(teacher)
    assert key.startswith("teachers/") and store.put_teacher(teacher) == key

    local_pool = store.resolve(pool_ref)
    assert Pool.open(local_pool).manifest().num_rows == 3
    assert store.resolve(PREFIX + key).read_bytes() == b"weights"


def test_work_dirs_are_published_and_found_again_elsewhere(store, tmp_path):
    work = store.work_dir("jobs/j1")
    (work / "state.pt").write_bytes(b"epoch 3")
    store.sync_up(work, "jobs/j1")
    assert store.exists("jobs/j1/state.pt")
    # Another machine: a fresh cache finds the published checkpoint in its work dir.
    elsewhere = ArtifactStore(store.root_url, cache_dir=tmp_path / "other-cache")
    assert (elsewhere.work_dir("jobs/j1") / "state.pt").read_bytes() == b"epoch 3"


def test_missing_inputs_are_user_errors(store, tmp_path):
    with pytest.raises(ArtifactError, match="no such file or directory"):
        store.upload_input(str(tmp_path / "nope.npz"))
    with pytest.raises(ArtifactError, match="no such checkpoint file"):
        store.put_teacher(tmp_path / "nope.pt")


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (what must not change)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


TRAVERSAL_KEYS = [
    "../x", "/etc", "/etc/passwd", "a/../../b", "pools/../../x", "..", ".", "pools/./x",
    "a//b", "a/", "", "a\\..\\..\\b", "..\\x", "a\0b", "%2e%2e/x", "pools/%2e%2e",
    "~/x", "C:/x", "pools/p q", "x" * 129, "a/" * 300,
]  # fmt: skip


@pytest.mark.parametrize("key", TRAVERSAL_KEYS)
def test_traversal_keys_are_refused_everywhere(store, tmp_path, key):
    src = tmp_path / "file.bin"
    src.write_bytes(b"data")
    before = _tree(tmp_path)
    with pytest.raises(ArtifactError):
        store.resolve(PREFIX + key)
    with pytest.raises(ArtifactError):
        store.work_dir(key)
    with pytest.raises(ArtifactError):
        store.put_file(src, key)
    with pytest.raises(ArtifactError):
        store.upload_input(PREFIX + key)
    assert _tree(tmp_path) == before


def test_remote_cache_paths_stay_inside_the_cache(tmp_path):
    """What a remote store lists is not trusted either: no download leaves the cache folder."""
    store = ArtifactStore(f"memory://kd3-{uuid.uuid4().hex}", cache_dir=tmp_path / "cache")
    store.fs.pipe(store.root + "/../../escape.txt", b"outside")
    store.fs.pipe(store.root + "/pools/p/../../../../escape.txt", b"outside")
    store.fs.pipe(store.root + "/pools/p/manifest.parquet", b"rows")
    with pytest.raises(ArtifactError):
        store.resolve(PREFIX + "../../escape.txt")
    with pytest.raises(ArtifactError, match="resolves outside"):
        store.resolve(PREFIX + "pools/p")
    with pytest.raises(ArtifactError, match="resolves outside"):
        store.work_dir("pools/p")
    assert [p for p in tmp_path.rglob("escape.txt")] == []
    assert not (tmp_path.parent / "escape.txt").exists()


def test_a_symlink_cannot_lead_a_key_out_of_a_local_store(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "manifest.parquet").write_bytes(b"rows")
    (tmp_path / "store" / "pools").mkdir()
    (tmp_path / "store" / "pools" / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(ArtifactError, match="resolves outside"):
        store.work_dir("pools/link")
    with pytest.raises(ArtifactError, match="resolves outside"):
        store.resolve(PREFIX + "pools/link/manifest.parquet")


def test_local_paths_in_a_job_need_an_allowed_root(tmp_path):
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "pool.npz").write_bytes(b"npz")
    (secret / "key.pem").write_bytes(b"secret")
    (allowed / "link.pem").symlink_to(secret / "key.pem")
    default = ArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match="local paths are not allowed"):
        default.resolve(str(allowed / "pool.npz"))
    store = ArtifactStore(tmp_path / "store", local_roots=[allowed])
    assert store.resolve(str(allowed / "pool.npz")).read_bytes() == b"npz"
    for ref in (str(secret / "key.pem"), str(allowed / ".." / "secret" / "key.pem"),
                str(allowed / "link.pem"), "/etc/passwd", str(allowed) + "/a\0b", 42):  # fmt: skip
        with pytest.raises(ArtifactError):
            store.resolve(ref)


def test_workers_read_their_allowed_roots_from_the_environment(tmp_path, monkeypatch):
    from workers.settings import Settings

    monkeypatch.setenv("KD3_LOCAL_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path)]))
    assert Settings.from_env().local_roots == (str(tmp_path / "a"), str(tmp_path))
    monkeypatch.delenv("KD3_LOCAL_ROOTS")
    assert Settings.from_env().local_roots == ()


def test_submitting_a_traversal_pool_fails_before_anything_is_queued(tmp_path):
    from workers.pipeline import plan

    store = ArtifactStore(tmp_path / "store")
    for pool in ("artifact:../victim_pool", "artifact:teachers/t.pt", "artifact:pools/a/b"):
        with pytest.raises(ArtifactError):
            plan(PipelineConfig(name="d", pool=pool, dedup=DedupSpec()), store)
    crawl = {"crawl": {"sources": ["wikimedia"]}, "classes": ["cat"]}
    with pytest.raises(ValidationError, match="name '..': use 1-128 of"):
        PipelineConfig(name="..", **crawl)  # refused when the config is read...
    config = PipelineConfig(name="ok", **crawl).model_copy(update={"name": ".."})
    with pytest.raises(ArtifactError):
        plan(config, store)  # ...and by plan(), should one be built some other way


def _crawl_ctx(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(job_id="crawl-1", artifacts=ArtifactStore(tmp_path / "store"),
                           redis_url="redis://127.0.0.1:9/0")  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [{"crawl_id": "../../x"}, {"crawl_id": "a/b"}, {"crawl_id": "TMP/x"},
     {"pool_key": "pools/../../x"}, {"pool_key": "jobs/other-job"}],
)  # fmt: skip
def test_crawl_ids_and_pool_keys_are_checked_before_crawling(tmp_path, bad):
    from workers.stages import run_crawl

    bad = json.loads(json.dumps(bad).replace("TMP", str(tmp_path)))
    spec = {"classes": ["cat"], "options": {"sources": ["wikimedia"], "per_class": 0},
            "pool_key": "pools/p", **bad}  # fmt: skip
    with pytest.raises(ArtifactError):
        run_crawl(spec, _crawl_ctx(tmp_path))
    assert not (tmp_path / "x").exists()
