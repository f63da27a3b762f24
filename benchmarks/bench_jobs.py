"""``iclvsft compare --jobs``: the demo experiment with 1 worker (in-process) vs 2 worker processes.

Runs ``iclvsft compare --config demo --jobs J --out <fresh folder>`` for J in 1, 2, alternating,
``--repeats`` times each (every run from scratch: training included), checks that every run's
results.json has the same cell keys and accuracies, and prints a Markdown table of wall times
(medians, all runs in brackets). Extra arguments go to every ``iclvsft compare`` call, e.g. to
shrink the demo for a quick check:

    .venv/bin/python benchmarks/bench_jobs.py                      # the real one: quiet machine, ~1-2 h
    .venv/bin/python benchmarks/bench_jobs.py --repeats 1 -- --test-size 4 --validation-size 4 \\
        --shots 0,2 --draws 1 --ft-samples 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ICLVSFT = Path(sys.executable).parent / "iclvsft"


def run_once(jobs: int, out: Path, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # the same threads per process in both settings: identical results
    cmd = [str(ICLVSFT), "compare", "--config", "demo", "--jobs", str(jobs), "--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def cells(out: Path) -> list[tuple[str, float]]:
    return [(r["key"], r["accuracy"]) for r in json.loads((out / "results.json").read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3; medians of >= 3)")
    parser.add_argument("--jobs", default="1,2", help="settings to compare (default 1,2)")
    parser.add_argument("--workdir", type=Path, help="where the run folders go (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="after --: flags for every iclvsft compare call")
    args = parser.parse_args()
    settings = [int(j) for j in args.jobs.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    walls: dict[int, list[float]] = {j: [] for j in settings}
    reference = None
    load = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for jobs in settings:  # alternating, so drifting load hits both settings alike
            out = workdir / f"jobs{jobs}-run{repeat}"
            walls[jobs].append(run_once(jobs, out, args.extra))
            found = cells(out)
            reference = reference or found
            if found != reference:
                sys.exit(f"{out}: cell keys or accuracies differ from the first run's")
            print(f"jobs {jobs} run {repeat + 1}: {walls[jobs][-1]:.1f} s", file=sys.stderr)
    base = statistics.median(walls[settings[0]])
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, Python {platform.python_version()}, "
        f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
        f"`iclvsft compare --config demo {' '.join(args.extra)}`; {len(reference)} cells, "
        "identical keys and accuracies in every run.\n"
    )
    print("| jobs | median wall s | runs (s) | speed-up vs jobs " + str(settings[0]) + " |")
    print("|---:|---:|---|---:|")
    for jobs in settings:
        median = statistics.median(walls[jobs])
        runs = ", ".join(f"{w:.1f}" for w in walls[jobs])
        print(f"| {jobs} | {median:.1f} | {runs} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
