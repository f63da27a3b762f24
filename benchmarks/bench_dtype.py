"""float32 vs bfloat16 on this CPU for the demo experiment: speed, accuracy, log-likelihoods.

Two parts, both on the default model with one torch thread:
  1. the demo experiment itself, run once per dtype (`iclvsft compare --config demo --dtype D
     --out DIR`, run before this script; pass the two DIRs): wall time of the ICL and FT phases,
     accuracy per cell, and how many per-item predictions agree between the dtypes;
  2. log-likelihoods of the gold answers on the same items and prompts (8 shots, fixed draw 1,
     `iclvsft-hf`), in both dtypes: time, mean and largest absolute difference, and how often the
     preferred answer of a binary task (parity: even/odd) changes.

    .venv/bin/python benchmarks/bench_dtype.py --runs runs/dtype-float32 runs/dtype-bfloat16 [--items 100]
"""

# ruff: noqa: E402 - the environment must be set before torch and transformers are imported
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import argparse
import json
import statistics
import time
from pathlib import Path


def summarize_runs(dirs: list[Path]) -> None:
    runs = []
    for d in dirs:
        meta = json.loads((d / "run.json").read_text())
        records = json.loads((d / "results.json").read_text())
        runs.append((meta, {_cell(r): r for r in records}, d))
    print("| dtype | wall s (whole run) | ICL cells: wall s | FT cells: wall s | the rest: training, loads s |")
    print("|---|---:|---:|---:|---:|")
    for meta, cells, _ in runs:
        icl = sum(r["wall_time_s"] for r in cells.values() if r["condition"] == "icl")
        ft = sum(r["wall_time_s"] for r in cells.values() if r["condition"] == "ft")
        rest = meta["wall_time_s"] - icl - ft
        print(f"| {meta['dtype']} | {meta['wall_time_s']:.0f} | {icl:.0f} | {ft:.0f} | {rest:.0f} |")
    (meta_a, cells_a, dir_a), (meta_b, cells_b, dir_b) = runs
    print(f"\n| cell | {meta_a['dtype']} accuracy | {meta_b['dtype']} accuracy | items with the same prediction |")
    print("|---|---:|---:|---:|")
    agree = total = 0
    diffs = []
    for key in sorted(set(cells_a) & set(cells_b)):
        a, b = cells_a[key], cells_b[key]
        pa, pb = _predictions(dir_a / a["predictions"]), _predictions(dir_b / b["predictions"])
        same = sum(pa[i] == pb[i] for i in pa)
        agree, total = agree + same, total + len(pa)
        diffs.append(b["accuracy"] - a["accuracy"])
        print(f"| {' '.join(map(str, key))} | {a['accuracy']:.3f} | {b['accuracy']:.3f} | {same}/{len(pa)} |")
    print(
        f"\nall cells: {agree}/{total} predictions identical ({agree / total:.1%}); accuracy difference "
        f"{meta_b['dtype']} − {meta_a['dtype']}: mean {statistics.fmean(diffs):+.3f}, "
        f"range {min(diffs):+.3f} … {max(diffs):+.3f} over {len(diffs)} cells"
    )


def _cell(r: dict) -> tuple:
    return (r["task"], r["condition"], r["split"], f"k={r['shots']}", f"n={r['ft_samples']}", f"draw={r['draw']}")


def _predictions(path: Path) -> dict[str, str]:
    return {row["id"]: row["prediction"] for row in map(json.loads, path.read_text().splitlines())}


def loglikelihoods(items: int) -> None:
    import torch
    from lm_eval.api.instance import Instance

    import iclvsft_tasks
    from iclvsft.models import resolve_model
    from iclvsft_tasks.backend.hflm import IclvsftHFLM

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    path = resolve_model("default")
    tm = iclvsft_tasks.task_manager(test_size=items, demos="fixed", draw=1)
    requests = []  # (task, item id, choice, context, continuation)
    for task in ("expression_pattern", "parity_pattern"):
        name = f"{task}_8shot"
        t = tm.load([name])["tasks"][name]
        for doc in t.test_docs():
            context = t.fewshot_context(doc, num_fewshot=8)
            choices = iclvsft_tasks.get_task(task).choices or (doc["answer"],)
            for choice in choices:
                requests.append((task, doc["id"], choice, context, " " + choice))
    results = {}
    for dtype in ("float32", "bfloat16"):
        lm = IclvsftHFLM(pretrained=path, dtype=dtype, device="cpu", batch_size=1)
        instances = [Instance("loglikelihood", {}, (c, x), i) for i, (*_, c, x) in enumerate(requests)]
        start = time.perf_counter()
        out = lm.loglikelihood(instances, disable_tqdm=True)
        results[dtype] = ([lp for lp, _ in out], time.perf_counter() - start)
        del lm
    (lp32, t32), (lp16, t16) = results["float32"], results["bfloat16"]
    print(
        f"\nlog-likelihoods of {len(requests)} answers (expression gold; parity even and odd), 8 shots, "
        f"{items} test items per task: float32 {t32:.1f} s, bfloat16 {t16:.1f} s ({t32 / t16:.1f}x)"
    )
    for task in ("expression_pattern", "parity_pattern"):
        idx = [i for i, r in enumerate(requests) if r[0] == task]
        diffs = [abs(lp16[i] - lp32[i]) for i in idx]
        print(
            f"- {task}: |Δ log p| mean {statistics.fmean(diffs):.3f}, median {statistics.median(diffs):.3f}, "
            f"max {max(diffs):.3f} nats (float32 mean log p {statistics.fmean(lp32[i] for i in idx):.3f})"
        )
    by_item: dict[str, dict[str, list[float]]] = {}
    for i, (task, item, _choice, *_rest) in enumerate(requests):
        if task == "parity_pattern":
            by_item.setdefault(item, {"float32": [], "bfloat16": []})
            by_item[item]["float32"].append(lp32[i])
            by_item[item]["bfloat16"].append(lp16[i])
    flips = sum(
        max(range(2), key=v["float32"].__getitem__) != max(range(2), key=v["bfloat16"].__getitem__)
        for v in by_item.values()
    )
    print(f"- parity_pattern: the preferred answer (even/odd) changes on {flips}/{len(by_item)} items")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, type=Path, help="the demo's output folders, float32 then bfloat16")
    parser.add_argument("--items", type=int, default=100)
    args = parser.parse_args()
    if args.runs:
        summarize_runs(args.runs)
    loglikelihoods(args.items)


if __name__ == "__main__":
    main()
