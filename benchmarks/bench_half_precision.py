"""Is bfloat16 (or float16) faster than float32 on this CPU? One matrix product of a model's MLP shape.

Times the three products of a linear layer in training, one torch thread, for each dtype:
``x @ W.T`` (the forward), ``g @ W`` (the input's gradient) and ``g.T @ x`` (the weight's gradient),
with Gemma 3 270M's MLP shape by default (640 -> 2048, 80 positions). Prints the CPU's capability,
whether torch's oneDNN multiplies each half-precision dtype natively, and a Markdown table of medians.

    .venv/bin/python benchmarks/bench_half_precision.py [--positions 80 --hidden 640 --inner 2048 --repeats 7]

Where oneDNN has no native support for a half-precision dtype on the CPU, torch falls back to a
generic loop (BENCHMARKS.md, "bfloat16 on an AVX2 CPU"); ``iclvsft compare``, ``iclvsft-train`` and the
``iclvsft-hf`` backend warn in that case.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from iclvsft_tasks.cliutil import machine_line, slow_half_precision

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def time_ms(product: Callable[[], object], repeats: int) -> float:
    product()  # warm-up: allocation, oneDNN's kernel choice
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=80, help="tokens in the batch (default 80)")
    parser.add_argument("--hidden", type=int, default=640, help="the layer's input width (default 640)")
    parser.add_argument("--inner", type=int, default=2048, help="the layer's output width (default 2048)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per product (default 7; median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    native = {d: slow_half_precision(d, "cpu") is None for d in ("bfloat16", "float16")}  # the warning's own check
    print(
        f"{machine_line()}, torch {torch.__version__}, oneDNN bfloat16 {native['bfloat16']}, "
        f"float16 {native['float16']}; one thread, ms per call (median of {args.repeats})\n"
    )
    print("| dtype | `x @ W.T` (forward) | `g @ W` (input gradient) | `g.T @ x` (weight gradient) |")
    print("|---|---:|---:|---:|")
    baseline: list[float] = []
    for dtype in DTYPES:
        weight = torch.randn(args.inner, args.hidden, dtype=dtype)
        x = torch.randn(args.positions, args.hidden, dtype=dtype)
        grad = torch.randn(args.positions, args.inner, dtype=dtype)
        products = (
            functools.partial(torch.matmul, x, weight.T),
            functools.partial(torch.matmul, grad, weight),
            functools.partial(torch.matmul, grad.T, x),
        )
        times = [time_ms(product, args.repeats) for product in products]
        baseline = baseline or times
        cells = [
            f"{t:.1f}" if dtype is torch.float32 else f"{t:.1f} ({t / base:.1f}×)" for t, base in zip(times, baseline)
        ]
        print(f"| {str(dtype).removeprefix('torch.')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
