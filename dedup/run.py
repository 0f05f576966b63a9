"""`kd3 dedup`: hash and embed new images, group near-duplicates, decontaminate, mark the manifest.

Idempotent: statuses are recomputed each run for every image that is not `invalid`, from hashes
and features cached by sha256 (dedup/cache.py), so a re-run decodes only images it has not seen.
The manifest is changed once, at the end, through `pool.update` (atomic replace under the lock);
rows added by a crawl while dedup runs are left as they are.

Two pool images are near-duplicates when they have the same pixels, or when their hashes are
within the radius or their features reach the similarity and the alignment check
(dedup/verify.py) confirms that one lines up with the other; groups are the connected components
of these links. Evaluation overlaps: dedup/decontaminate.py (each pool image is also looked at
as the picture inside its frame, dedup/views.py).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from dedup import (
    binary_index,
    copy_net,
    copy_search,
    decontaminate,
    embeddings,
    grouping,
    verify,
    views,
)
from dedup.cache import EmbeddingCache, HashCache
from dedup.errors import DedupError
from dedup.evalset import load_eval_set
from dedup.hashing import hamming, image_hashes, to_codes
from dedup.options import DedupOptions
from pool import manifest
from pool.images import decode_rgb, resize_center_crop
from pool.store import Pool

BATCH = 2048
CENTRE_MIN_IMAGES = 64  # smaller pools: features are compared uncentred
COPY_KEY = f"copy-views-v{views.VERSION}"  # cache of dedup/views.py view_descriptors
# Two pool images within the hash radius are linked from this pair alignment (verify.py
# pair_alignment). Decontamination's VERIFY_SIM_HASH was tuned on pool-image-to-item pairs, not on
# pool pairs (whose score is another), so grouping keeps its own
GROUP_SIM_HASH = 0.93
COPY_DIM = views.VIEWS * views.COPY_GRID**2


@dataclass
class DedupResult:
    pool: Pool
    hashed: int = 0  # images decoded this run
    invalid: list[str] = field(default_factory=list)  # "sha256: reason" for undecodable files
    statuses: dict[str, str] = field(default_factory=dict)  # sha256 -> status
    groups: list[list[str]] = field(default_factory=list)  # [representative, *duplicates]
    overlaps: dict[str, str] = field(default_factory=dict)  # pool sha256 -> evaluation item id
    overlap_kinds: dict[str, str] = field(default_factory=dict)  # pool sha256 -> edit kind
    eval_loader: object = None  # EvalSet, for the contact sheet
    candidates: decontaminate.Candidates | None = None  # verified pool/evaluation pairs
    embedding_edges: dict = field(default_factory=dict)  # pool pairs: checked / confirmed
    settings: dict = field(default_factory=dict)


def model_key_for_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"teacher-{digest.hexdigest()[:16]}"


def dedup_pool(
    pool_dir: str | os.PathLike,
    options: DedupOptions | None = None,
    *,
    eval_set: str | os.PathLike | None = None,
    extractor: embeddings.FeatureExtractor | None = None,
    model_key: str | None = None,
    progress: bool = False,
) -> DedupResult:
    """Run the whole stage on one pool. `extractor` None means hashes only (the options'
    `network` and `embeddings` are for dedup.stage.run_dedup, which builds the extractor)."""
    opts = options or DedupOptions()
    if extractor is not None and not model_key:
        raise DedupError("an extractor needs a model key to cache its features under")
    radius, sim, verify_sim = opts.radius, opts.similarity, opts.verify_sim
    pool = Pool.open(pool_dir)
    evalset = load_eval_set(eval_set) if eval_set is not None else None
    table = pool.manifest()
    scope = table.filter(pc.not_equal(table["status"], "invalid"))
    shas = scope["sha256"].to_pylist()
    result = DedupResult(pool=pool, eval_loader=evalset)
    learned = evalset is not None and opts.learned  # it only serves decontamination
    result.settings = {
        "hash": opts.hash,
        "radius": radius,
        "radius_inclusive": True,
        "index": opts.index,
        "index_used": None,
        "network": model_key if extractor is not None else None,
        "sim": sim if extractor is not None else None,
        "eval_set": str(eval_set) if eval_set is not None else None,
        "eval_crops": opts.eval_crops,
        "eval_variants_per_item": None,
        "features_centred_on": None,
        "candidate_radius": decontaminate.CANDIDATE_RADIUS,
        "candidate_sim": decontaminate.CANDIDATE_SIM if extractor is not None else None,
        "copy_top_items": copy_search.TOP_ITEMS,
        "copy_floor": copy_search.FLOOR,
        "learned_descriptor": copy_net.key() if learned else None,
        "learned_top_items": copy_search.NET_TOP,
        "learned_floor": copy_search.NET_FLOOR,
        "learned_floor_standing_out": {
            "similarity": copy_search.NET_FLOOR_ALONE,
            "above_next_item": copy_search.NET_STANDOUT,
        },
        "verify_sim": verify_sim,
        "verify_sim_with_hash": min(verify_sim, decontaminate.VERIFY_SIM_HASH),
        "group_sim_with_hash": min(verify_sim, GROUP_SIM_HASH),
        "verify_margin_moved": decontaminate.MOVED_MARGIN,
        "verify_learned": {
            "similarity": decontaminate.LEARNED_SURE,
            "above_next_item": decontaminate.LEARNED_GAP,
            "verify_sim": min(verify_sim, decontaminate.VERIFY_SIM_LEARNED),
            "item_min_detail": decontaminate.LEARNED_MIN_DETAIL,
            "verify_sim_colour_left_out": decontaminate.VERIFY_SIM_SHAPE,
            "refused_below_another_item_by": decontaminate.LEARNED_VETO,
            "zoom_search_min_side": verify.ZOOM_MIN_SIDE / verify.SIZE,
        }
        if learned
        else None,
        "verify_cohort": {
            "items": decontaminate.COHORT,
            "weight": decontaminate.COHORT_WEIGHT,
            "start": decontaminate.COHORT_START,
        },
        "embedding_duplicates_verified": extractor is not None,
    }

    hashes, features, copies, nets, failed = _compute(
        pool, scope, extractor, model_key, learned, progress, result
    )
    ok = [i for i, s in enumerate(shas) if s not in failed]
    shas = [shas[i] for i in ok]
    info = {c: scope[c].take(ok) for c in ("width", "height", "fetched_at", "bytes")}
    codes = to_codes([hashes[s][opts.hash] for s in shas])
    mirrors = to_codes([hashes[s][f"{opts.hash}_mirror"] for s in shas])
    pixels = [hashes[s]["pixel_sha256"] for s in shas]
    feats = np.stack([features[s] for s in shas]) if extractor is not None and shas else None
    mean = None
    if feats is not None:
        # pooled post-ReLU features all share a direction: remove it (embeddings.centred), once
        # the pool is large enough for its mean to describe the typical image
        mean = feats.mean(axis=0) if len(feats) >= CENTRE_MIN_IMAGES else np.zeros(feats.shape[1])
        feats = embeddings.centred(feats, mean)
        result.settings["features_centred_on"] = (
            f"mean of {len(feats)} pool images" if mean.any() else None
        )

    copy = np.stack([copies[s] for s in shas]) if shas else np.zeros((0, COPY_DIM), np.float32)
    net = np.stack([nets[s] for s in shas]) if learned and shas else None
    paths = scope["path"].take(ok).to_pylist()

    def load_thumbs(rows):
        return _thumbnails(pool, [paths[r] for r in rows], progress)

    def load_views(rows):
        return _view_thumbnails(pool, [paths[r] for r in rows], progress)

    overlaps: dict[int, decontaminate.Overlap] = {}
    if evalset is not None:
        index = decontaminate.prepare(
            evalset, opts.hash, extractor, opts.eval_crops, progress, learned
        )
        result.settings["eval_variants_per_item"] = index.per_item
        if index.features is not None:
            index.features = embeddings.centred(index.features, mean) if mean is not None else None
        overlaps, result.candidates = decontaminate.find_overlaps(
            index,
            shas,
            pixels,
            codes,
            feats,
            copy,
            load_views,
            radius,
            verify_sim=verify_sim,
            verify_sim_hash=min(verify_sim, decontaminate.VERIFY_SIM_HASH),
            method=opts.index,
            progress=progress,
            net=net,
        )

    # Near-duplicate groups among the images that are not evaluation overlaps.
    rest = np.array([i for i in range(len(shas)) if i not in overlaps], dtype=np.int64)
    method = binary_index.choose_method(len(rest), 2 * len(rest), radius, opts.index)
    result.settings["index_used"] = method
    a, b, checked = _edges(
        rest, codes, mirrors, pixels, feats, radius, sim, verify_sim, method, load_thumbs, progress
    )
    linked = set(zip(rest[a].tolist(), rest[b].tolist(), strict=True))
    aligned = {pair: score for pair, score in checked.items() if pair in linked}
    result.embedding_edges = {"checked": len(checked), "confirmed": len(aligned)}
    labels = grouping.components(len(rest), a, b)
    area = (
        info["width"].to_numpy(zero_copy_only=False) * info["height"].to_numpy(zero_copy_only=False)
    ).astype(np.int64)[rest]
    fetched = pc.cast(info["fetched_at"], pa.int64()).fill_null(0).to_numpy()[rest]
    rep = rest[grouping.representatives(labels, area, fetched)] if len(rest) else rest

    updates: dict[str, dict] = {s: _kept() for s in shas}
    groups: dict[int, list[int]] = {}
    for member, leader in zip(rest.tolist(), rep.tolist(), strict=True):
        if member != leader:
            groups.setdefault(leader, []).append(member)
            updates[shas[member]] = _duplicate_row(
                member, leader, shas, codes, mirrors, pixels, feats, radius, aligned
            )
    for row, ov in overlaps.items():
        updates[shas[row]] = {
            **_kept(),
            "status": "test_overlap",
            "eval_match": evalset.ids[ov.eval_item],
            "eval_hamming": ov.hamming,
            "eval_similarity": ov.similarity,
            "status_reason": ov.reason
            if ov.alignment is None
            else f"{ov.reason} {ov.alignment:.4f}{ov.evidence_note} ({ov.how})",
        }
        result.overlaps[shas[row]] = evalset.ids[ov.eval_item]
        result.overlap_kinds[shas[row]] = decontaminate.edit_kind(ov)
    for sha, reason in failed.items():
        updates[sha] = {**_kept(), "status": "invalid", "status_reason": reason}
        result.invalid.append(f"{sha}: {reason}")
    for sha in shas:  # the manifest's phash column holds pHash whatever --hash says
        updates[sha]["phash"] = hashes[sha]["phash"]
    result.groups = [[shas[k], *(shas[m] for m in v)] for k, v in groups.items()]
    result.statuses = {s: u["status"] for s, u in updates.items()}
    pool.update(lambda t: manifest.update_rows(t, updates))
    return result


def _kept() -> dict:
    return {
        "status": "kept",
        "duplicate_of": None,
        "dup_hamming": None,
        "dup_similarity": None,
        "eval_match": None,
        "eval_hamming": None,
        "eval_similarity": None,
        "status_reason": None,
    }


def _duplicate_row(member, leader, shas, codes, mirrors, pixels, feats, radius, aligned) -> dict:
    ham = int(
        min(
            hamming(codes[member : member + 1], codes[leader : leader + 1])[0],
            hamming(mirrors[member : member + 1], codes[leader : leader + 1])[0],
        )
    )
    similarity = float(feats[member] @ feats[leader]) if feats is not None else None
    pair = (min(member, leader), max(member, leader))
    if pixels[member] == pixels[leader]:
        reason = "exact-pixels"
    elif pair in aligned and ham <= radius:
        reason = f"hash {ham}, aligned {aligned[pair]:.4f}"
    elif pair in aligned:
        reason = f"embedding {aligned[pair]:.4f}"
    else:
        reason = "chain"  # linked to the representative through other group members
    return {
        **_kept(),
        "status": "duplicate",
        "duplicate_of": shas[leader],
        "dup_hamming": ham,
        "dup_similarity": similarity,
        "status_reason": reason,
    }


def _edges(
    rest, codes, mirrors, pixels, feats, radius, sim, verify_sim, method, load_thumbs, progress
):
    """Match-graph edges (positions in `rest`): same pixels; hashes within the radius that the
    alignment check confirms (>= GROUP_SIM_HASH: two pieces of evidence); similar features
    that it confirms (>= verify_sim). Also {(row, row): alignment} of every pair checked (rows
    of the whole scope, smaller first).

    Neither hashes nor features alone link two images: a teacher's pooled features can put
    unrelated images at similarity >= 0.97 (bench/dedup_quality.py --teacher-similarity), and
    pHash puts distinct simple drawings within a few bits (circles of different colours in the
    demo's world). A pair is checked only when same pixels have not already joined it.
    """
    empty = np.empty(0, np.int64)
    if len(rest) == 0:
        return empty, empty, {}
    first_with: dict[str, int] = {}
    same = [(first_with.setdefault(pixels[r], k), k) for k, r in enumerate(rest.tolist())]
    same = np.array([p for p in same if p[0] != p[1]], dtype=np.int64).reshape(-1, 2)
    found = binary_index.near_pairs(codes[rest], mirrors[rest], radius, method, progress=progress)
    candidates = [np.stack([found.query, found.db], 1)]
    needed = [np.full(len(found.query), min(verify_sim, GROUP_SIM_HASH))]
    if feats is not None:
        close = embeddings.similar(feats[rest], feats[rest], sim, progress=progress)
        candidates.append(np.stack([close.query, close.db], 1))
        needed.append(np.full(len(close.query), verify_sim))
    pairs, need = np.concatenate(candidates).astype(np.int64), np.concatenate(needed)
    pairs = np.sort(pairs, axis=1)
    distinct = pairs[:, 0] != pairs[:, 1]
    pairs, need = pairs[distinct], need[distinct]
    order = np.lexsort((need, pairs[:, 1], pairs[:, 0]))  # the lower threshold first
    pairs, need = pairs[order], need[order]
    first = np.ones(len(pairs), bool)
    first[1:] = (pairs[1:] != pairs[:-1]).any(1)
    pairs, need = pairs[first], need[first]
    labels = grouping.components(len(rest), same[:, 0], same[:, 1])
    apart = labels[pairs[:, 0]] != labels[pairs[:, 1]]
    pairs, need = pairs[apart], need[apart]
    rows = np.unique(pairs)
    local = np.searchsorted(rows, pairs)
    score = verify.pair_alignment(load_thumbs(rest[rows]), local[:, 0], local[:, 1], progress)
    ok = score >= need
    checked = {
        (int(rest[i]), int(rest[j])): float(v)
        for (i, j), v in zip(pairs.tolist(), score.tolist(), strict=True)
    }
    a = np.concatenate([same[:, 0], pairs[ok, 0]])
    b = np.concatenate([same[:, 1], pairs[ok, 1]])
    return a, b, checked


def _compute(pool, scope, extractor, model_key, learned, progress, result):
    """Hashes, copy descriptors (and features, and learned copy descriptors when `learned`) of
    every in-scope image, decoding only those not cached yet."""
    hash_cache = HashCache(pool.root)
    hashes = hash_cache.load()
    emb_cache = EmbeddingCache(pool.root, model_key) if extractor is not None else None
    features = emb_cache.load() if emb_cache is not None else {}
    copy_cache = EmbeddingCache(pool.root, COPY_KEY, folder="copy")
    copies = copy_cache.load()
    net_cache = EmbeddingCache(pool.root, copy_net.key(), folder="copy") if learned else None
    nets = net_cache.load() if net_cache is not None else {}
    size = getattr(extractor, "input_size", 32)
    todo = [
        (s, p)
        for s, p in zip(scope["sha256"].to_pylist(), scope["path"].to_pylist(), strict=True)
        if s not in hashes
        or s not in copies
        or (extractor is not None and s not in features)
        or (learned and s not in nets)
    ]
    failed: dict[str, str] = {}

    def work(item):
        sha, path = item
        try:
            img = decode_rgb(pool.read_bytes(path))
            img.load()
        except Exception as exc:
            return sha, None, None, None, None, f"undecodable: {type(exc).__name__}: {exc}"[:200]
        hashed = hashes.get(sha) or image_hashes(img)
        describe = learned and sha not in nets
        pictures = views.pictures(img) if sha not in copies or describe else None
        copy = copies[sha] if sha in copies else views.view_descriptors(img, views=pictures)
        thumb = np.asarray(resize_center_crop(img, size)) if extractor is not None else None
        squashed = [copy_net.squash(p) for p in pictures] if describe else None
        return sha, hashed, copy, thumb, squashed, None

    bar = tqdm(total=len(todo), disable=not progress or not todo, desc="hash + embed", unit="image")
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        for start in range(0, len(todo), BATCH):
            new_hashes, new_copies, thumbs, squashed = {}, {}, {}, {}
            for sha, hashed, copy, thumb, whole, error in ex.map(work, todo[start : start + BATCH]):
                if error:
                    failed[sha] = error
                    continue
                if sha not in hashes:
                    new_hashes[sha] = hashed
                if sha not in copies:
                    new_copies[sha] = copy
                if thumb is not None and sha not in features:
                    thumbs[sha] = thumb
                if whole is not None:
                    squashed[sha] = whole
            new_features = {}
            if thumbs:
                out = np.asarray(extractor(np.stack(list(thumbs.values()))), dtype=np.float32)
                if out.ndim != 2 or len(out) != len(thumbs):
                    raise DedupError(
                        f"feature extractor returned shape {out.shape} for {len(thumbs)} images; "
                        "expected (N, D)"
                    )
                new_features = dict(zip(thumbs, out, strict=True))
            if squashed:
                described = copy_net.view_descriptors(list(squashed.values()))
                new_nets = dict(zip(squashed, described, strict=True))
                net_cache.append(new_nets)
                nets.update(new_nets)
            hash_cache.append(new_hashes)
            copy_cache.append(new_copies)
            copies.update(new_copies)
            if emb_cache is not None:
                emb_cache.append(new_features)
            hashes.update(new_hashes)
            features.update(new_features)
            result.hashed += len(new_hashes)
            bar.update(min(BATCH, len(todo) - start))
    bar.close()
    return hashes, features, copies, nets, failed


def _view_thumbnails(pool: Pool, paths: list[str], progress: bool = False):
    """Thumbnails of every view of each pool image (dedup/views.py) and, per thumbnail, the
    position in `paths` of its image."""
    per_image = _decode_each(pool, paths, progress, lambda img: views.thumbnails(img, verify.SIZE))
    owner = np.repeat(np.arange(len(paths)), [len(v) for v in per_image]).astype(np.int64)
    thumbs = [t for v in per_image for t in v]
    if not thumbs:
        return np.zeros((0, verify.SIZE, verify.SIZE, 3), np.uint8), owner
    return np.stack(thumbs), owner


def _thumbnails(pool: Pool, paths: list[str], progress: bool = False) -> np.ndarray:
    """32x32 thumbnails of pool images (decoded again: only verification candidates need them)."""
    if not paths:
        return np.zeros((0, verify.SIZE, verify.SIZE, 3), np.uint8)
    return np.stack(
        _decode_each(
            pool, paths, progress, lambda img: np.asarray(resize_center_crop(img, verify.SIZE))
        )
    )


def _decode_each(pool: Pool, paths: list[str], progress: bool, fn) -> list:
    """fn(decoded image) for each pool file, decoded again on a few threads, in order."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        loaded = ex.map(lambda path: fn(decode_rgb(pool.read_bytes(path))), paths)
        return list(
            tqdm(loaded, total=len(paths), disable=not progress, desc="thumbnails to verify")
        )
