"""The artifact store on a local folder and on a non-local fsspec filesystem (memory://)."""

from __future__ import annotations

import uuid

import pytest

from pool import NewImage, Pool
from tests.conftest import make_image_bytes
from workers.artifacts import PREFIX, ArtifactError, ArtifactStore


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
    assert store.resolve(str(teacher)) == teacher  # a plain path is used as it is


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
