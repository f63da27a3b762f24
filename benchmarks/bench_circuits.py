"""Cost of the circuit-shift analysis (`iclvsft circuits`) on the default model.

Runs the default analysis: the default model (Gemma 3 270M), expression_pattern, 8 shots, 50
pairs, three conditions (base 0-shot, base 8-shot, FT 0-shot). The FT condition uses
``--ft-checkpoint`` when given, else the base model itself (so the script runs standalone; the
FT shift is then 0 and the timing is that of a full checkpoint). Exact activation patching runs on
the first ``--activation-items`` pairs of each condition only. Prints wall time, peak memory
(``ru_maxrss``) and the seconds per pair of attribution and of activation patching, per condition,
as a Markdown section for BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_circuits.py [--items 50] [--activation-items 3] [--ft-checkpoint DIR]

**Expected cost** (one torch thread, float32, Gemma 3 270M: 18 layers x 4 heads + 18 MLPs = 90
components; prompts about 40 tokens at 0 shots and 230 at 8 shots). Attribution costs two forward
passes and one backward pass per pair; activation patching one forward pass per component, 90 per
pair, batched 8 at a time. Both run only the tokens after the prefix a pair's clean and corrupt
prompts share (at 8 shots the demonstrations, about 200 tokens, are computed once per condition),
so 8 shots cost little more than 0. From the 2-pair smoke run on the development machine (2 cores,
the other one busy with another benchmark, so indicative only): attribution 0.7-0.8 s per pair at
0 and at 8 shots; activation 8-9 s per pair at 0 shots and 13 s at 8 shots (without the shared
prefix: 2.8 s and 65 s at 8 shots). So the default run (50 pairs x 3 conditions, 3 activation-checked
pairs per condition) should take about 2 min of attribution + 1.5 min of checks + a few seconds of
loading, and peak near 2.8 GB (ru_maxrss; the float32 model is 1.1 GB). ``--method activation`` on
all 50 pairs would take about 25 minutes.
"""

# ruff: noqa: E402 - the environment must be set before torch and transformers are imported
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime
import platform
import resource
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="expression_pattern")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument(
        "--activation-items",
        type=int,
        default=3,
        help="pairs per condition also scored by exact activation patching (default 3)",
    )
    parser.add_argument("--ft-checkpoint", help="fine-tuned checkpoint (default: the base model itself)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from iclvsft.circuits import CircuitsConfig, run_circuits
    from iclvsft.models import resolve_model

    model_path = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-circuits-") as tmp:
        config = CircuitsConfig(
            model=args.model,
            task=args.task,
            shots=args.shots,
            ft_checkpoint=args.ft_checkpoint or model_path,
            items=args.items,
            check_items=args.activation_items,
            out=args.out or tmp,
            dtype=args.dtype,
            device="cpu",
        )
        start = time.perf_counter()
        result = run_circuits(config)
        wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux

    import transformers

    arch = result["architecture"]
    print("## Circuit-shift analysis (`iclvsft circuits`)\n")
    print(
        f"`benchmarks/bench_circuits.py`. {datetime.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} (torch threads "
        f"{torch.get_num_threads()}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; load average at end {os.getloadavg()[0]:.2f}.\n"
    )
    print(
        f"Model {result['model']} ({arch['model_type']}, {arch['layers']} layers x {arch['heads']} heads, "
        f"head_dim {arch['head_dim']}), {args.dtype}; task {args.task}, {args.shots} shots, "
        f"{len(result['pairs'])} pairs; FT checkpoint: {args.ft_checkpoint or 'the base model itself'}.\n"
    )
    print(
        "| condition | prompt tokens (mean) | attribution s/pair | activation s/pair | activation / attribution | "
        "pairs checked | Spearman (heads / MLPs) | condition wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for name, c in result["conditions"].items():
        tokens = sum(p["tokens"][str(c["shots"])] for p in result["pairs"]) / len(result["pairs"])
        t = c["timing"]
        act = t.get("activation_s_per_pair")
        ratio = f"{act / t['attribution_s_per_pair']:.1f}x" if act else "–"
        rho = c["check"].get("spearman") or {}

        def fmt(v: float | None) -> str:
            return "–" if v is None else f"{v:.2f}"

        print(
            f"| {name} ({c['label']}) | {tokens:.0f} | {t['attribution_s_per_pair']:.2f} | "
            f"{'–' if act is None else f'{act:.2f}'} | {ratio} | {c['check']['pairs']} | "
            f"{fmt(rho.get('heads'))} / {fmt(rho.get('mlps'))} | {t['wall_s']:.1f} |"
        )
    timing = result["timing"]
    print(
        f"\nWall time {wall:.1f} s (model loads: base {timing.get('load_base_s', 0):.1f} s, FT "
        f"{timing.get('load_ft_s', 0):.1f} s); peak memory (ru_maxrss) {peak_mb:,.0f} MB."
    )
    print(f"Verdicts: heads — {result['verdict']['heads']}; MLPs — {result['verdict']['mlps']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
