"""Items per second for each task's 20,000-item train split, on one core.

Measures the whole split machinery (generation, hashing ids, de-duplication), the same code path
lm-eval and training use. Prints a Markdown table for BENCHMARKS.md.

    make bench            # or: .venv/bin/python benchmarks/bench_generation.py [--items N] [--repeats R]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

from iclvsft_tasks.data.splits import SplitSpec, draw_splits
from iclvsft_tasks.tasks.registry import TASKS

TARGET = 20_000  # items/s on one core (issue #2)


def measure(task: str, items: int, repeats: int) -> list[float]:
    spec = SplitSpec(task, test_size=0, test_broken_size=0, validation_size=0, train_size=items)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw_splits(spec)
        rates.append(items / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# generation benchmark, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (pinned to 1), Python {platform.python_version()}, load average {load:.2f}"
    )
    print(f"\n| task | items | median items/s | best items/s | target {TARGET:,}/s |")
    print("|---|---:|---:|---:|---|")
    for task in TASKS:
        rates = measure(task, args.items, args.repeats)
        median = statistics.median(rates)
        verdict = "met" if median >= TARGET else "MISSED"
        print(f"| {task} | {args.items:,} | {median:,.0f} | {max(rates):,.0f} | {verdict} |")


if __name__ == "__main__":
    main()
