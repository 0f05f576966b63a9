"""The dedup report: counts per status and class, the thresholds used, and a contact sheet PNG
of example groups and overlaps to check by eye. Written to POOL/dedup/report.json and
POOL/dedup/contact_sheet.png.

What the counts are (manifest statuses, one per stored image):
    kept          unique images, and the representative (largest) of each near-duplicate group
    duplicate     near-duplicates of a kept image: same pixels in another file, pHash/dHash
                  within the radius, or similar features confirmed by the alignment check
    test_overlap  images that match an evaluation image; kept out of training
    invalid       files that cannot be decoded
Byte-identical files are stored once (the pool is addressed by sha256), so they are never a
`duplicate`: a crawl that finds the same file under another URL records it in POOL/finds/
(`byte_identical_refinds` below).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from common.files import atomic_write
from pool.images import decode_rgb, resize_center_crop
from pool.manifest import STATUSES

TILE = 64
MAX_ROWS = 12
MAX_PER_ROW = 8
OVERLAPS_PER_KIND = 4


def write_report(result, out_dir: Path | None = None) -> dict:
    pool = result.pool
    out_dir = Path(out_dir) if out_dir else pool.root / "dedup"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pool.manifest()
    names = [n or "(none)" for n in table["class_name"].to_pylist()]
    per_class: dict[str, Counter] = {}
    for name, status in zip(names, table["status"].to_pylist(), strict=True):
        per_class.setdefault(name, Counter())[status] += 1
    finds = pool.finds()
    cand = result.candidates
    report = {
        "settings": result.settings,
        "decoded_this_run": result.hashed,
        "counts": dict(Counter(table["status"].to_pylist())),
        "counts_per_class": {c: dict(v) for c, v in sorted(per_class.items())},
        "groups": len(result.groups),
        "embedding_pairs": result.embedding_edges,
        "eval_candidates": None
        if cand is None
        else {"checked": len(cand.row), "pool_images_matched": len(result.overlaps)},
        "overlaps_by_edit": dict(Counter(result.overlap_kinds.values())),
        "byte_identical_refinds": 0 if finds is None else finds.num_rows,
        "undecodable": result.invalid,
        "contact_sheet": str(out_dir / "contact_sheet.png"),
    }
    atomic_write(out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    contact_sheet(result, table, out_dir / "contact_sheet.png")
    return report


def format_report(report: dict) -> str:
    """The report for a person: settings, what each count is, then the counts per class."""
    s, counts = report["settings"], report["counts"]
    features = (
        f"features {s['network']} similarity >= {s['sim']}, confirmed by alignment >= "
        f"{s['verify_sim']}"
        if s["network"]
        else "no features (hashes only)"
    )
    crops = " with crops" if s["eval_set"] and s["eval_crops"] else ""
    meaning = [
        ("kept", counts.get("kept", 0), "unique images, and the one kept from each group"),
        (
            "duplicate",
            counts.get("duplicate", 0),
            f"near-duplicates of kept images, in {_count(report['groups'], 'group')}: same "
            "pixels in another file, hash within the radius, or confirmed features",
        ),
        ("test_overlap", counts.get("test_overlap", 0), "match an evaluation image"),
        ("invalid", counts.get("invalid", 0), "files that cannot be decoded"),
        (
            "re-finds",
            report.get("byte_identical_refinds", 0),
            "byte-identical re-finds: the same file under another URL, stored once and "
            "recorded in finds/ (not a status, not counted above)",
        ),
    ]
    lines = [
        f"settings: {s['hash']} within {s['radius']} bits (inclusive); {features}; "
        f"evaluation set {s['eval_set'] or 'none'}{crops}",
        f"decoded this run: {_count(report['decoded_this_run'], 'image')} (images seen before "
        "are cached)",
        *(f"{name:<12} {n:>7}  {text}" for name, n, text in meaning),
    ]
    if s["embedding_duplicates_verified"]:
        pairs = report["embedding_pairs"]
        lines.append(
            f"feature-only duplicate pairs: {pairs['confirmed']} of {pairs['checked']} confirmed "
            "by the alignment check"
        )
    if report.get("eval_candidates"):
        ev = report["eval_candidates"]
        lines.append(
            f"evaluation candidates: {_count(ev['checked'], 'pair')} checked, "
            f"{_count(ev['pool_images_matched'], 'pool image')} match"
        )
    if report.get("overlaps_by_edit"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["overlaps_by_edit"].items()))
        lines.append(
            f"evaluation overlaps by how they differ: {kinds} (each row's status_reason says "
            "why: alignment score, view, window, turn)"
        )
    width = max([5, *(len(c) for c in report["counts_per_class"])])
    lines.append(f"\n{'class':<{width}} " + " ".join(f"{x:>12}" for x in STATUSES))
    for name, counts in [*report["counts_per_class"].items(), ("total", report["counts"])]:
        lines.append(f"{name:<{width}} " + " ".join(f"{counts.get(x, 0):>12}" for x in STATUSES))
    lines.append(f"contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def contact_sheet(result, table, path: Path) -> None:
    """One row per example: a group (representative first), or, for each kind of edit found
    (dedup.decontaminate.edit_kind), up to OVERLAPS_PER_KIND overlaps as pool | evaluation
    pairs side by side."""
    paths = dict(zip(table["sha256"].to_pylist(), table["path"].to_pylist(), strict=True))
    reasons = dict(
        zip(table["sha256"].to_pylist(), table["status_reason"].to_pylist(), strict=True)
    )
    rows: list[tuple[str, list[Image.Image]]] = []
    for group in sorted(result.groups, key=len, reverse=True)[: MAX_ROWS // 2]:
        tiles = [_pool_tile(result.pool, paths[s]) for s in group[:MAX_PER_ROW]]
        rows.append((f"group of {len(group)}: kept first", tiles))
    by_kind: dict[str, list[str]] = {}
    for sha in result.overlaps:
        by_kind.setdefault(result.overlap_kinds.get(sha, "?"), []).append(sha)
    ev = result.eval_loader
    for kind, shas in sorted(by_kind.items()):
        tiles, first = [], shas[0]
        for sha in shas[: min(OVERLAPS_PER_KIND, MAX_PER_ROW // 2)]:
            item = result.overlaps[sha]
            tiles += [_pool_tile(result.pool, paths[sha]), _tile(ev.load(ev.ids.index(item)))]
        label = f"{kind} ({len(shas)}): pool | eval pairs, e.g. {reasons.get(first) or ''}"
        rows.append((label[:100], tiles))
    width = TILE * MAX_PER_ROW
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (TILE + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((4, 2), "no duplicates or overlaps found", fill="black")
    for r, (label, tiles) in enumerate(rows):
        y = r * (TILE + 14)
        draw.text((2, y), label, fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * TILE, y + 12))
    atomic_write(path, lambda fh: sheet.save(fh, "PNG"))


def _pool_tile(pool, row_path: str) -> Image.Image:
    return _tile(decode_rgb(pool.read_bytes(row_path)))


def _tile(img: Image.Image) -> Image.Image:
    return resize_center_crop(img, TILE)
