"""Seconds from starting ``iclvsft-train`` to its first logged loss (start-up), and its wall time.

LoRA, 8 samples of expression_pattern (2 steps), logging every step, one torch thread; each run's
folder is deleted once timed. To compare two commits, check each out in turn and run it with
``--repeats 1`` alternately, so that drifting load hits both alike.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 5] [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train_speed import BIN, RUNENV  # this folder is on sys.path when a script in it runs

from iclvsft.models import model_dir


def one_run(model: str) -> tuple[float, float]:
    """(seconds to the first logged loss, wall seconds) of one run."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        cmd = [str(BIN / "iclvsft-train"), "--task", "expression_pattern", "--samples", "8"]
        cmd += ["--model_name_or_path", model, "--output_dir", str(Path(tmp) / "run"), "--logging_steps", "1"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env={**os.environ, **RUNENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        first, tail = None, []
        for line in proc.stdout:  # TRL's log lines, stamped as they arrive
            if first is None and "'loss'" in line:
                first = time.perf_counter() - start
            tail = [*tail[-20:], line]
        proc.wait()
        wall = time.perf_counter() - start
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode or first is None:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(tail)}")
    return first, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=str(model_dir("default")))
    args = parser.parse_args()
    firsts, walls = [], []
    for i in range(args.repeats):
        first, wall = one_run(args.model)
        firsts.append(first)
        walls.append(wall)
        print(f"run {i + 1}: first loss {first:.1f} s, wall {wall:.1f} s", flush=True)
    print(
        f"median first loss {statistics.median(firsts):.1f} s {[round(x, 1) for x in firsts]}, "
        f"wall {statistics.median(walls):.1f} s {[round(x, 1) for x in walls]}"
    )


if __name__ == "__main__":
    main()
