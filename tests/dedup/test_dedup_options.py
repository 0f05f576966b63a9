"""DedupOptions is the one source of dedup's defaults, and run_dedup (the stage behind `kd3 dedup`
and the dedup job) honours every option; bad values are one line naming the flag."""

from __future__ import annotations

import argparse
import json
import typing

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from common.options import OptionsError, from_args, parse
from dedup import binary_index, embeddings, hashing
from dedup.cli import register
from dedup.errors import DedupError
from dedup.options import DedupOptions, HashKind, IndexMethod, Network
from dedup.report import format_report
from dedup.stage import run_dedup
from pool.store import NewImage, Pool
from tests.dedup.dedup_testkit import crop, encode, smooth, textured
from workers.cli import main as kd3_main

torch.set_num_threads(1)
HASHES_ONLY = DedupOptions(embeddings=False)


def dedup_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the top parser, its `dedup` subcommand's parser)."""
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    return parser, subparsers.choices["dedup"]


def add(pool: Pool, images: dict[str, bytes]) -> dict[str, str]:
    """{name: sha256}; each image stored under http://x/<name>."""
    items = [NewImage(data, url=f"http://x/{name}") for name, data in images.items()]
    result = pool.add(items)
    shas = [*result.added, *result.already_present]
    return dict(zip(images, shas, strict=True))


def statuses(pool: Pool) -> dict[str, str]:
    return {r["sha256"]: r["status"] for r in pool.manifest().to_pylist()}


@pytest.fixture
def pool(tmp_path):
    return Pool.create(tmp_path / "pool")


def test_flags_have_the_models_defaults_and_reach_every_field():
    parser, dedup = dedup_parser()
    defaults = DedupOptions()
    assert from_args(DedupOptions, parser.parse_args(["dedup", "P"]), "x") == defaults
    actions = {a.dest: a for a in dedup._actions}
    for name, value in defaults.model_dump().items():
        shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
        assert actions[name].help.endswith(f"(default: {shown})"), name
    every = [
        "--radius", "6", "--sim", "0.9", "--verify-sim", "0.5", "--network", "thumbnail-16",
        "--no-embeddings", "--hash", "dhash", "--index", "ivf", "--no-eval-crops", "--no-learned",
    ]  # fmt: skip
    given = from_args(DedupOptions, parser.parse_args(["dedup", "P", *every]), "x")
    assert all(getattr(given, f) != getattr(defaults, f) for f in DedupOptions.model_fields)
    assert given.similarity == 0.9 and given.hash == "dhash" and given.eval_crops is False


def test_the_options_names_are_the_ones_implemented():
    assert set(embeddings.NETWORKS) == set(typing.get_args(Network))
    assert set(hashing.HASH_KINDS) == set(typing.get_args(HashKind))
    assert set(binary_index.METHODS) == set(typing.get_args(IndexMethod))


def test_bad_values_are_one_line_naming_the_flag_or_field(pool, capsys):
    add(pool, {"a.png": encode(smooth(1))})
    for argv, flag in [
        (["--radius", "64"], "--radius"),
        (["--sim", "0"], "--sim"),
        (["--verify-sim", "high"], "--verify-sim"),
    ]:
        assert kd3_main(["dedup", str(pool.root), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kd3 dedup: error:") and flag in err and err.count("\n") == 1, err
    assert pool.manifest()["phash"].to_pylist() == [None]  # nothing ran
    # the pipeline config and the job spec name the field
    with pytest.raises(OptionsError, match="radius: .*similarity: ") as info:
        parse(DedupOptions, {"radius": 99, "similarity": 2}, "dedup", flags=False)
    assert "\n" not in str(info.value)
    with pytest.raises(OptionsError, match="radus: Extra inputs are not permitted"):
        parse(DedupOptions, {"radus": 3}, "dedup", flags=False)


def test_hash_kind_decides_which_hash_is_compared(pool):
    a = smooth(1)
    shas = add(pool, {"a.png": encode(a), "b.png": encode(ImageEnhance.Contrast(a).enhance(1.5))})
    # this contrast change moves pHash 12 bits and dHash 2: at radius 4 only dHash links them
    phash = run_dedup(pool.root, HASHES_ONLY.model_copy(update={"radius": 4}))
    assert phash["counts"] == {"kept": 2} and phash["settings"]["hash"] == "phash"
    dhash = run_dedup(pool.root, HASHES_ONLY.model_copy(update={"radius": 4, "hash": "dhash"}))
    assert dhash["counts"] == {"kept": 1, "duplicate": 1}
    assert statuses(pool)[shas["b.png"]] == "duplicate"
    assert dhash["decoded_this_run"] == 0  # both hashes were cached by the first run


def test_index_method_is_the_one_searched_and_exact_ones_agree(pool):
    a = smooth(2)
    add(pool, {"a.png": encode(a), "m.png": encode(ImageOps.mirror(a)), "c.png": encode(smooth(3))})
    counts = {}
    for method, used in [("auto", "flat"), ("flat", "flat"), ("multihash", "multihash"),
                         ("ivf", "ivf")]:  # fmt: skip
        report = run_dedup(pool.root, HASHES_ONLY.model_copy(update={"index": method}))
        assert report["settings"]["index"] == method
        assert report["settings"]["index_used"] == used
        counts[method] = report["counts"]
    assert all(c == {"kept": 2, "duplicate": 1} for c in counts.values()), counts


def test_verify_sim_and_eval_crops_decide_what_overlaps(pool, tmp_path):
    originals = [textured(700 + k) for k in range(3)]
    np.savez(tmp_path / "eval.npz", x=np.stack([np.asarray(o) for o in originals]))
    # a 10% crop of an evaluation image
    shas = add(pool, {"crop.png": encode(crop(originals[0], 0.1, 0.1, 0.9))})
    evaluation = tmp_path / "eval.npz"

    default = run_dedup(pool.root, HASHES_ONLY, eval_set=evaluation)
    assert statuses(pool)[shas["crop.png"]] == "test_overlap"
    assert default["settings"]["eval_variants_per_item"] == 30
    assert default["eval_candidates"]["pool_images_matched"] == 1

    # verification must score 1 (or the hash be identical and verification >= 0.93)
    strict = run_dedup(
        pool.root, DedupOptions(embeddings=False, radius=0, verify_sim=1.0), eval_set=evaluation
    )
    row = next(r for r in pool.manifest().to_pylist() if r["sha256"] == shas["crop.png"])
    assert strict["settings"]["verify_sim"] == 1.0
    assert strict["counts"] == {"kept": 1} or row["eval_hamming"] == 0

    # without the crops and turns, the copy descriptor's nearest items still make it a
    # candidate, and verification searches crops itself
    no_crops = run_dedup(
        pool.root, DedupOptions(embeddings=False, eval_crops=False), eval_set=evaluation
    )
    assert no_crops["counts"] == {"test_overlap": 1}
    assert no_crops["settings"]["eval_variants_per_item"] == 2  # the image and its mirror


def test_embeddings_network_and_similarity(pool):
    a = smooth(5)
    jittered = ImageEnhance.Brightness(ImageEnhance.Contrast(a).enhance(1.3)).enhance(0.8)
    shas = add(pool, {"a.png": encode(a), "j.png": encode(jittered), "o.png": encode(smooth(6))})
    cache = pool.root / "dedup" / "embeddings"

    off = run_dedup(pool.root, DedupOptions(radius=0, embeddings=False))
    assert off["counts"] == {"kept": 3} and off["settings"]["network"] is None
    assert not cache.exists()

    found = run_dedup(pool.root, DedupOptions(radius=0, similarity=0.9))
    assert statuses(pool)[shas["j.png"]] == "duplicate"  # only the features link them
    assert found["settings"]["network"] == "thumbnail-8" and found["settings"]["sim"] == 0.9
    assert list((cache / "thumbnail-8").glob("part-*.npz"))

    strict = run_dedup(pool.root, DedupOptions(radius=0, similarity=1.0, network="thumbnail-16"))
    assert strict["counts"] == {"kept": 3}
    assert list((cache / "thumbnail-16").glob("part-*.npz"))


def test_teacher_features_and_no_embeddings_contradict(pool, tmp_path):
    add(pool, {"a.png": encode(smooth(7))})
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(DedupError, match="--teacher .* --no-embeddings") as info:
        run_dedup(pool.root, HASHES_ONLY, teacher=ckpt, teacher_loader=lambda p: None)
    assert "\n" not in str(info.value)


def test_npz_evaluation_set_of_files_is_decoded_like_the_pool(pool, tmp_path):
    """The 'jpeg' form holds original files: EXIF orientation and transparency are applied
    (pool.npz), so an upright copy and the flattened RGBA image are found."""
    upright = textured(800, 40).crop((0, 0, 40, 30))  # not square: a rotation cannot hide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    rgba = textured(801).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))))
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    files = [rotated, encode(rgba), encode(textured(802))]
    np.savez(
        tmp_path / "eval.npz",
        jpeg=np.frombuffer(b"".join(files), np.uint8),
        offsets=np.cumsum([0, *map(len, files)]),
    )
    shas = add(pool, {"up.png": encode(upright), "flat.png": encode(on_white),
                      "other.png": encode(textured(803))})  # fmt: skip
    run_dedup(pool.root, HASHES_ONLY, eval_set=tmp_path / "eval.npz")
    rows = {r["sha256"]: r for r in pool.manifest().to_pylist()}
    assert rows[shas["up.png"]]["eval_match"] == "eval.npz#0"
    assert rows[shas["flat.png"]]["eval_match"] == "eval.npz#1"
    assert rows[shas["flat.png"]]["status_reason"] == "exact-pixels"
    assert rows[shas["other.png"]]["status"] == "kept"


def test_npz_evaluation_set_of_grayscale_pixels(pool, tmp_path):
    gray = textured(810).convert("L")
    np.savez(tmp_path / "gray.npz", x=np.asarray(gray)[None, :, :, None])
    shas = add(pool, {"g.png": encode(gray.convert("RGB"))})
    run_dedup(pool.root, HASHES_ONLY, eval_set=tmp_path / "gray.npz")
    row = pool.manifest().to_pylist()[0]
    assert row["sha256"] == shas["g.png"] and row["status_reason"] == "exact-pixels"


def test_report_says_what_each_number_counts(pool, capsys):
    a = smooth(9)
    add(pool, {"a.png": encode(a), "a.bmp": encode(a, "BMP"), "b.png": encode(smooth(10))})
    refind = pool.add([NewImage(encode(a), url="http://elsewhere/a.png")])
    assert refind.already_present and refind.finds_recorded == 1  # same bytes, another URL
    assert kd3_main(["dedup", str(pool.root), "--no-embeddings"]) == 0
    out = capsys.readouterr().out
    report = json.loads((pool.root / "dedup" / "report.json").read_text())
    assert report["counts"] == {"kept": 2, "duplicate": 1}
    assert report["byte_identical_refinds"] == 1
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "      1  near-duplicates of kept images, in 1 group:" in lines["duplicate"]
    assert "      1  byte-identical re-finds: the same file under another URL" in lines["re-finds"]
    assert "not counted above" in lines["re-finds"]
    assert format_report(report) == out.rstrip("\n")


def test_progress_bars_name_each_long_step_and_only_when_asked(pool, tmp_path, capsys):
    a = smooth(11)
    jittered = ImageEnhance.Brightness(ImageEnhance.Contrast(a).enhance(1.3)).enhance(0.8)
    add(pool, {"a.png": encode(a), "j.png": encode(jittered), "e.png": encode(textured(820))})
    np.savez(tmp_path / "eval.npz", x=np.asarray(textured(820))[None])
    options = DedupOptions(radius=0, similarity=0.9)
    run_dedup(pool.root, options, eval_set=tmp_path / "eval.npz", progress=True)
    err = capsys.readouterr().err
    steps = [
        "hash + embed", "evaluation set", "overlap hashes", "overlap features",
        "duplicate search", "feature search", "thumbnails to verify", "verify duplicates (1/2)",
    ]  # fmt: skip
    assert [s for s in steps if f"{s}:" not in err] == []
    run_dedup(pool.root, options, eval_set=tmp_path / "eval.npz")
    assert capsys.readouterr().err == ""
