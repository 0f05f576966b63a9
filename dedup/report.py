"""The dedup report: counts per status and class, the thresholds used, and a contact sheet PNG
of example groups and overlaps to check by eye. Written to POOL/dedup/report.{json,png}."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from pool.images import decode_rgb, resize_center_crop
from pool.manifest import STATUSES

TILE = 64
MAX_ROWS = 12
MAX_PER_ROW = 8


def write_report(result, out_dir: Path | None = None) -> dict:
    pool = result.pool
    out_dir = Path(out_dir) if out_dir else pool.root / "dedup"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pool.manifest()
    names = [n or "(none)" for n in table["class_name"].to_pylist()]
    per_class: dict[str, Counter] = {}
    for name, status in zip(names, table["status"].to_pylist(), strict=True):
        per_class.setdefault(name, Counter())[status] += 1
    report = {
        "settings": result.settings,
        "decoded_this_run": result.hashed,
        "counts": dict(Counter(table["status"].to_pylist())),
        "counts_per_class": {c: dict(v) for c, v in sorted(per_class.items())},
        "groups": len(result.groups),
        "embedding_pairs": result.embedding_edges,
        "undecodable": result.invalid,
        "contact_sheet": str(out_dir / "contact_sheet.png"),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    contact_sheet(result, table, out_dir / "contact_sheet.png")
    return report


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"hash {s['hash']} radius <= {s['radius']} (inclusive); network {s['network']} "
        f"similarity >= {s['sim']}; evaluation set {s['eval_set']}",
        f"decoded this run: {report['decoded_this_run']}; near-duplicate groups: {report['groups']}",
    ]
    if s["embedding_duplicates_verified"]:
        pairs = report["embedding_pairs"]
        lines.append(
            f"feature-only duplicate pairs: {pairs['confirmed']} of {pairs['checked']} confirmed "
            f"by the alignment check (>= {s['verify_sim']})"
        )
    width = max([5, *(len(c) for c in report["counts_per_class"])])
    lines.append(f"{'class':<{width}} " + " ".join(f"{x:>12}" for x in STATUSES))
    for name, counts in [*report["counts_per_class"].items(), ("total", report["counts"])]:
        lines.append(f"{name:<{width}} " + " ".join(f"{counts.get(x, 0):>12}" for x in STATUSES))
    lines.append(f"contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)


def contact_sheet(result, table, path: Path) -> None:
    """One row per example: a group (representative first) or an overlap (pool | evaluation)."""
    paths = dict(zip(table["sha256"].to_pylist(), table["path"].to_pylist(), strict=True))
    rows: list[tuple[str, list[Image.Image]]] = []
    for group in sorted(result.groups, key=len, reverse=True)[: MAX_ROWS // 2]:
        tiles = [_pool_tile(result.pool, paths[s]) for s in group[:MAX_PER_ROW]]
        rows.append((f"group of {len(group)}: kept first", tiles))
    for sha, item in list(result.overlaps.items())[: MAX_ROWS - len(rows)]:
        ev = result.eval_loader
        tile = _tile(ev.load(ev.ids.index(item)))
        rows.append(
            (f"overlap: pool | eval {item}"[:60], [_pool_tile(result.pool, paths[sha]), tile])
        )
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
    sheet.save(path)


def _pool_tile(pool, row_path: str) -> Image.Image:
    return _tile(decode_rgb(pool.read_bytes(row_path)))


def _tile(img: Image.Image) -> Image.Image:
    return resize_center_crop(img, TILE)
