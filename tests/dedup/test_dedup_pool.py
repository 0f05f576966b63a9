"""dedup_pool and `kd3 dedup` on small real pools: every kind of duplicate, overlaps,
incremental re-runs, interruption, bad input."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from dedup import run as dedup_run
from dedup.cli import register
from dedup.embeddings import TorchExtractor
from dedup.errors import DedupError
from dedup.options import DedupOptions as Opts
from dedup.run import dedup_pool
from pool.store import NewImage, Pool
from tests.dedup.dedup_testkit import encode, smooth
from workers.cli import main as kd3_main

torch.set_num_threads(1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def add(pool: Pool, data: bytes, name: str, minutes: int = 0) -> str:
    result = pool.add(
        [NewImage(data, url=f"http://x/{name}", fetched_at=T0 + timedelta(minutes=minutes))]
    )
    return (result.added or result.already_present)[0]


def status(pool: Pool) -> dict[str, dict]:
    return {r["sha256"]: r for r in pool.manifest().to_pylist()}


def small_extractor() -> TorchExtractor:
    """A small real torch network: 4x4 average pooling, flattened (colour layout features)."""
    return TorchExtractor(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten()))


@pytest.fixture
def pool(tmp_path):
    return Pool.create(tmp_path / "pool")


def test_exact_pixel_resized_and_mirrored_duplicates(pool):
    a = smooth(1)
    a_png = add(pool, encode(a), "a.png", minutes=1)
    a_bmp = add(pool, encode(a, "BMP"), "a.bmp", minutes=0)  # same pixels, other bytes
    a_big = add(pool, encode(a.resize((64, 64), Image.Resampling.BICUBIC)), "a64.png", 5)
    b = add(pool, encode(smooth(2)), "b.png")
    b_flip = add(pool, encode(ImageOps.mirror(smooth(2))), "bflip.png", minutes=3)
    c = add(pool, encode(smooth(3)), "c.png")

    result = dedup_pool(pool.root, Opts(radius=4))
    rows = status(pool)
    # the largest image represents a's group although it was fetched last
    assert rows[a_big]["status"] == "kept"
    for dup in (a_png, a_bmp):
        assert rows[dup]["status"] == "duplicate" and rows[dup]["duplicate_of"] == a_big
        assert rows[dup]["dup_hamming"] <= 4
    # same size: the earliest fetch is kept; the mirror is found through the mirrored hash
    assert rows[b]["status"] == "kept"
    assert rows[b_flip]["duplicate_of"] == b and rows[b_flip]["status_reason"].startswith(
        "hash 0, aligned "
    )
    assert rows[c]["status"] == "kept" and rows[c]["duplicate_of"] is None
    assert all(len(r["phash"]) == 16 for r in rows.values())
    assert sorted(map(len, result.groups)) == [2, 3]


def test_exact_pixel_duplicates_found_at_radius_zero_and_reason_recorded(pool):
    a = smooth(4)
    first = add(pool, encode(a), "a.png", minutes=0)
    second = add(pool, encode(a, "BMP"), "a.bmp", minutes=1)
    dedup_pool(pool.root, Opts(radius=0))
    rows = status(pool)
    assert rows[second]["status_reason"] == "exact-pixels"
    assert rows[second]["duplicate_of"] == first
    assert rows[first]["status"] == "kept" and rows[second]["dup_hamming"] == 0


def test_embedding_near_duplicates_with_a_torch_extractor(pool):
    a = smooth(5)
    original = add(pool, encode(a), "a.png", minutes=0)
    jittered = ImageEnhance.Brightness(ImageEnhance.Contrast(a).enhance(1.3)).enhance(0.8)
    copy = add(pool, encode(jittered), "a2.png", minutes=1)
    other = add(pool, encode(smooth(6)), "b.png")
    # radius 0 leaves only the embedding to link the jittered copy
    dedup_pool(
        pool.root, Opts(radius=0, similarity=0.95), extractor=small_extractor(), model_key="pool4"
    )
    rows = status(pool)
    assert rows[copy]["status"] == "duplicate" and rows[copy]["duplicate_of"] == original
    assert rows[copy]["status_reason"].startswith("embedding 0.9")  # alignment-confirmed
    assert rows[copy]["dup_similarity"] >= 0.95
    assert rows[other]["status"] == "kept"
    assert list((pool.root / "dedup" / "embeddings" / "pool4").glob("part-*.npz"))


def test_decontamination_against_npz_and_folder(pool, tmp_path):
    e1, e2, e3 = smooth(10), smooth(11), smooth(12)
    np.savez(tmp_path / "eval.npz", x=np.stack([np.asarray(e) for e in (e1, e2, e3)]))
    reencoded = add(pool, encode(e1, "JPEG", quality=85), "e1.jpg")
    same_pixels = add(pool, encode(e2, "BMP"), "e2.bmp")
    cropped = add(pool, encode(e3.crop((0, 0, 29, 29))), "e3crop.png")
    clean = add(pool, encode(smooth(13)), "clean.png")

    dedup_pool(
        pool.root,
        Opts(radius=4, similarity=0.99),
        eval_set=tmp_path / "eval.npz",
        extractor=small_extractor(),
        model_key="m",
    )
    rows = status(pool)
    assert rows[reencoded]["status"] == "test_overlap"
    assert rows[reencoded]["eval_match"] == "eval.npz#0"
    assert rows[reencoded]["eval_hamming"] <= 4 and rows[reencoded]["eval_similarity"] > 0.9
    assert rows[same_pixels]["status_reason"] == "exact-pixels"
    assert rows[same_pixels]["eval_match"] == "eval.npz#1"
    assert rows[same_pixels]["eval_hamming"] == 0
    assert rows[cropped]["status"] == "test_overlap" and rows[cropped]["eval_match"] == "eval.npz#2"
    assert rows[clean]["status"] == "kept" and rows[clean]["eval_match"] is None

    folder = tmp_path / "evalfolder" / "cls"
    folder.mkdir(parents=True)
    (folder / "clean.png").write_bytes(encode(smooth(13)))
    dedup_pool(pool.root, Opts(radius=4), eval_set=folder.parent)
    rows = status(pool)
    assert rows[clean]["status"] == "test_overlap"
    assert rows[clean]["status_reason"] == "exact-bytes"
    assert rows[clean]["eval_match"] == "cls/clean.png"
    assert rows[reencoded]["status"] == "kept"  # statuses are recomputed each run


def test_incremental_rerun_decodes_only_new_images_and_is_idempotent(pool):
    for i in range(5):
        add(pool, encode(smooth(20 + i)), f"{i}.png")
    add(pool, encode(smooth(20).resize((48, 48))), "dup.png")
    first = dedup_pool(pool.root, extractor=small_extractor(), model_key="m")
    assert first.hashed == 6
    before = status(pool)
    again = dedup_pool(pool.root, extractor=small_extractor(), model_key="m")
    assert again.hashed == 0 and status(pool) == before
    new = add(pool, encode(ImageOps.mirror(smooth(21))), "new.png", minutes=9)
    third = dedup_pool(pool.root, extractor=small_extractor(), model_key="m")
    assert third.hashed == 1
    rows = status(pool)
    assert rows[new]["status"] == "duplicate"
    assert {s: r["status"] for s, r in rows.items() if s != new} == {
        s: r["status"] for s, r in before.items()
    }


class Interrupt(Exception):
    pass


def test_interrupted_run_leaves_manifest_valid_and_keeps_finished_batches(pool, monkeypatch):
    for i in range(6):
        add(pool, encode(smooth(40 + i)), f"{i}.png")
    add(pool, encode(smooth(40), "BMP"), "dup.bmp")
    before = pool.manifest()
    monkeypatch.setattr(dedup_run, "BATCH", 3)
    inner, calls = small_extractor(), []

    def failing(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise Interrupt("killed")
        return inner(batch)

    with pytest.raises(Interrupt):
        dedup_pool(pool.root, extractor=failing, model_key="m")
    assert Pool.open(pool.root).manifest().equals(before)  # untouched and still valid
    result = dedup_pool(pool.root, extractor=inner, model_key="m")
    assert result.hashed == 4  # the first batch of 3 was kept in the cache
    assert sorted(result.statuses.values()).count("duplicate") == 1


def test_undecodable_file_is_marked_invalid_and_the_rest_is_processed(pool):
    good = add(pool, encode(smooth(50)), "good.png")
    bad = add(pool, encode(smooth(51)), "bad.png")
    path = pool.root / status(pool)[bad]["path"]
    path.write_bytes(path.read_bytes()[:40])
    result = dedup_pool(pool.root)
    rows = status(pool)
    assert rows[bad]["status"] == "invalid" and rows[bad]["status_reason"].startswith("undecodable")
    assert rows[good]["status"] == "kept" and len(result.invalid) == 1


def test_bad_eval_sets_raise_one_line_errors(pool, tmp_path):
    add(pool, encode(smooth(60)), "a.png")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 8, 8, 3), np.float32))
    for eval_set, needle in [
        (tmp_path / "missing", "not found"),
        (tmp_path / "junk.npz", "not a readable .npz"),
        (tmp_path / "floats.npz", "'x' must be uint8"),
    ]:
        with pytest.raises(DedupError, match=needle) as info:
            dedup_pool(pool.root, eval_set=eval_set)
        assert "\n" not in str(info.value)
    assert status(pool)[next(iter(status(pool)))]["phash"] is None  # nothing written


def test_cli_writes_report_and_contact_sheet(pool, tmp_path, capsys):
    a = smooth(70)
    add(pool, encode(a), "a.png")
    add(pool, encode(a.resize((48, 48))), "a48.png")
    add(pool, encode(smooth(71)), "b.png")
    np.savez(tmp_path / "eval.npz", x=np.asarray(smooth(71))[None])
    code = kd3_main(["dedup", str(pool.root), "--eval", str(tmp_path / "eval.npz")])
    assert code == 0
    report = json.loads((pool.root / "dedup" / "report.json").read_text())
    assert report["counts"] == {"kept": 1, "duplicate": 1, "test_overlap": 1}
    assert report["settings"]["radius_inclusive"] is True
    assert Image.open(pool.root / "dedup" / "contact_sheet.png").size[0] > 0
    assert "test_overlap" in capsys.readouterr().out

    assert kd3_main(["dedup", str(pool.root), "--teacher", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and err.count("\n") == 1

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))  # no teacher loader given
    args = parser.parse_args(["dedup", str(pool.root), "--teacher", "x.pt"])
    with pytest.raises(DedupError, match="--teacher needs a teacher loader"):
        args.func(args)


def test_cli_uses_the_teacher_loader_it_was_given(pool, tmp_path):
    add(pool, encode(smooth(80)), "a.png")
    ckpt = tmp_path / "teacher.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    loaded = []

    def loader(path):
        loaded.append(path)
        return small_extractor()

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), teacher_loader=loader)
    args = parser.parse_args(["dedup", str(pool.root), "--teacher", str(ckpt)])
    assert args.func(args) == 0
    assert loaded == [str(ckpt)]
    assert list((pool.root / "dedup" / "embeddings").glob("teacher-*/part-*.npz"))
