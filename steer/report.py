"""The pool score's report: POOL/score/report.json (the yield table and settings) and
POOL/score/report.html (the table, and per class the kept images the teacher finds most and
least like the class they were crawled for, to check by eye). The page links the pool's own
image files (../images/...), so it opens from the pool folder without copies."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pyarrow.compute as pc

from common.files import atomic_write
from steer.score import PoolScore, load_scores, report_dir

SHOWN = 8  # images per row


def write_report(result: PoolScore, shown: int = SHOWN) -> dict[str, Path]:
    out = report_dir(result.pool)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    atomic_write(paths["json"], (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    atomic_write(paths["html"], _page(result, shown).encode())
    return paths


def _page(result: PoolScore, shown: int) -> str:
    table = load_scores(result.pool)
    table = table.filter(
        pc.and_(pc.equal(table["status"], "kept"), pc.equal(table["teacher_id"], result.teacher_id))
    )
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in
                         (c.name, c.crawled, c.kept, c.useful, c.elsewhere)) + "</tr>"
        for c in result.classes
    ]  # fmt: skip
    parts = [
        "<!doctype html><meta charset='utf-8'><title>kd3 pool score</title>",
        "<style>body{font:14px sans-serif} td,th{padding:2px 8px;text-align:right}"
        " figure{display:inline-block;margin:2px;font-size:11px;text-align:center}"
        " img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated}</style>",
        f"<h1>Pool {html.escape(result.pool)}</h1>",
        f"<p>teacher {html.escape(result.teacher)} ({result.teacher_id}); useful: kept, and the "
        f"teacher agrees with the crawled class with confidence &ge; {result.min_confidence}</p>",
        "<table><tr><th>class</th><th>crawled</th><th>kept</th><th>useful</th>"
        "<th>elsewhere</th></tr>" + "".join(rows) + "</table>",
    ]
    for c in result.classes:
        mine = table.filter(pc.equal(table["class_name"], c.name))
        order = pc.sort_indices(mine, [("teacher_class_prob", "descending")])
        mine = mine.take(order).to_pylist()
        parts.append(f"<h2>{html.escape(c.name)}</h2>")
        if not mine:
            parts.append("<p>no kept images crawled for this class</p>")
            continue
        parts.append("<p>most confident</p>" + "".join(_figure(r) for r in mine[:shown]))
        least = mine[-shown:][::-1] if len(mine) > shown else []
        parts.append("<p>least confident</p>" + "".join(_figure(r) for r in least))
    return "\n".join(parts) + "\n"


def _figure(row: dict) -> str:
    caption = f"{row['teacher_class_prob']:.2f} ({row['teacher_class']})"
    title = row.get("title") or row.get("keyword") or ""
    return (
        f"<figure><img src='../{html.escape(row['path'])}' title='{html.escape(str(title))}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
