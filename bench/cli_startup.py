"""How long `kd3 --help` (and a command's own --help) takes from a fresh process.

The issue's bar: `kd3 --help` under 0.3 s. Each command line runs REPEATS times in a new Python
process; the median and the fastest are printed, with a bare `python -c pass` beside them for
the interpreter's own start.

    .venv/bin/python bench/cli_startup.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 7
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "kd3 --help": [sys.executable, "-m", "workers.cli", "--help"],
    "kd3 crawl --help": [sys.executable, "-m", "workers.cli", "crawl", "--help"],
    "kd3 distill --help": [sys.executable, "-m", "workers.cli", "distill", "--help"],
}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    results = {}
    print(f"{'command':<22} {'median s':>9} {'fastest s':>10}")
    for name, cmd in CASES.items():
        times = [timed(cmd) for _ in range(REPEATS)]
        results[name] = {"median_s": statistics.median(times), "min_s": min(times)}
        print(f"{name:<22} {statistics.median(times):>9.3f} {min(times):>10.3f}")
    out = Path(__file__).parent / "results" / "cli_startup.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
