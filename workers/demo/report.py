"""The demo's HTML report: accuracies, pool stats and the plots, in one page next to the run."""

from __future__ import annotations

import html
import os
from pathlib import Path


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(out: Path, path: str | None, caption: str) -> str:
    if not path or not Path(path).exists():
        return ""
    rel = os.path.relpath(path, out)
    return f'<figure><img src="{html.escape(rel)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def write_html(out: Path, s: dict) -> Path:
    acc = s["accuracy"]
    art = s["artifacts"]
    accuracy = _table(
        [("teacher (resnet20, original style)", f"{acc['teacher']:.1%}"),
         ("KD student (resnet8, web pool)", f"{acc['kd']:.1%}"),
         ("KD3 student (resnet8, web pool)", f"{acc['kd3']:.1%}")],
        ("model", "final-epoch accuracy"),
    )  # fmt: skip
    crawl = _table(sorted(s["crawl"].items()), ("crawl stat (Redis hash)", "value"))
    truth = _table(
        [(kind, ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
         for kind, c in sorted(s["pool_by_truth"].items())],
        ("what the image really is", "status after dedup"),
    )  # fmt: skip
    timings = _table([(k, f"{v:.0f} s") for k, v in s["timings"].items()], ("stage", "time"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>kd3 demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>kd3 demo</h1>
<p>A teacher trained on flat shapes was distilled into a small student using only images crawled
from a local web that draws the same shapes in another style. Accuracy is on the held-out
evaluation split of the teacher's original style.</p>
<h2>Accuracy</h2>{accuracy}
<p>{"<br>".join(html.escape(f"{name}: {note}") for name, note in s.get("methods", {}).items() if note)}</p>
<h2>KD3 training</h2>{_image(out, art["kd3"].get("report.png"), "KD3: accuracy, selection, per class")}
<h2>KD training</h2>{_image(out, art["kd"].get("report.png"), "KD: accuracy and per class")}
<h2>Pool</h2>{truth}
{_image(out, art["dedup"].get("contact_sheet"), "dedup: example duplicate groups and evaluation overlaps")}
<h2>Crawl stats</h2>{crawl}
<h2>Time</h2>{timings}<p>wall time {s["wall_seconds"]:.0f} s</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
