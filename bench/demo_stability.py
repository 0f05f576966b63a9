"""Does the demo's headline hold run after run? Runs `kd3 demo` N times (each in its own folder,
each a fresh start as `make demo` is) and prints, per run, the teacher's, KD's and KD3's
final-epoch accuracy and the largest epoch-to-epoch swing of each student's curve, then the
spread over the runs.

    .venv/bin/python bench/demo_stability.py --runs 3      # ~2-3 min per run on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.demo.run import run_demo  # noqa: E402


def curve(metrics_path: str) -> list[float]:
    lines = Path(metrics_path).read_text().splitlines()
    return [json.loads(line)["eval_accuracy"] for line in lines]


def largest_swing(values: list[float]) -> float:
    return max((abs(b - a) for a, b in zip(values, values[1:], strict=False)), default=0.0)


def largest_drop(values: list[float]) -> float:
    """The largest fall from one epoch to the next (a rise early on is learning; a fall is
    what instability looks like)."""
    return max((a - b for a, b in zip(values, values[1:], strict=False)), default=0.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo-stability"))
    parser.add_argument("--results", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for i in range(args.runs):
        s = run_demo(Path(args.out) / f"run{i + 1}")
        acc = s["accuracy"]
        kd, kd3 = (
            curve(s["artifacts"]["kd"]["metrics.jsonl"]),
            curve(s["artifacts"]["kd3"]["metrics.jsonl"]),
        )
        rows.append({"teacher": acc["teacher"], "kd": acc["kd"], "kd3": acc["kd3"],
                     "kd_curve": kd, "kd3_curve": kd3, "kd_swing": largest_swing(kd),
                     "kd3_swing": largest_swing(kd3), "kd_drop": largest_drop(kd),
                     "kd3_drop": largest_drop(kd3), "seconds": s["wall_seconds"]})  # fmt: skip
        r = rows[-1]
        print(f"run {i + 1}: teacher {r['teacher']:.1%}  KD {r['kd']:.1%}  KD3 {r['kd3']:.1%}  "
              f"largest epoch-to-epoch swing KD {r['kd_swing']:.1%} KD3 {r['kd3_swing']:.1%}, "
              f"drop KD {r['kd_drop']:.1%} KD3 {r['kd3_drop']:.1%}  "
              f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip
    for name in ("teacher", "kd", "kd3"):
        values = [r[name] for r in rows]
        print(f"{name:<8} min {min(values):.1%}  max {max(values):.1%}  "
              f"spread {max(values) - min(values):.1%}")  # fmt: skip
    ahead = sum(r["kd3"] > r["kd"] for r in rows)
    print(f"KD3 ahead of KD in {ahead} of {len(rows)} runs")
    if args.results:
        Path(args.results).write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
