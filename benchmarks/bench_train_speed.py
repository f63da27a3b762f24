"""iclvsft-train's training speed against a bare completion-only PyTorch loop (target: <= 1.25x), before/after.

For each task and recipe, one ``iclvsft-train --dry-run`` writes the data and resolved.yaml; then, in
separate processes, each run on the same data:
  before: plain ``trl sft --config resolved.yaml`` (what iclvsft-train ran before fast_sft);
  after:  ``iclvsft-train`` itself (``python -m iclvsft_train.fast_sft sft``, the compact CPU loss);
  bare:   this script's loop (``--bare``): same model, LoRA config, optimizer and learning rate, batch 1 x 4
          accumulated, the LM head applied only at the completion positions, no checkpoints;
  bf16:   with ``--bf16 RECIPES``, ``iclvsft-train --bf16 true --use_cpu true`` once (autocast to bfloat16 on
          CPU, weights in float32): its s/sample, and its logged losses against the first float32 run's
          (both log every step).
s/sample is TRL's ``train_runtime`` / samples (it includes the checkpoints saved during training) and the
bare loop's time / samples; wall is end to end, start-up = wall - train_runtime.

    .venv/bin/python benchmarks/bench_train_speed.py [--samples 48] [--repeats 1] [--bf16 lora] [--model default]
"""

# ruff: noqa: E402 - the environment must be set before torch is imported
from __future__ import annotations

import os

RUNENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(RUNENV)

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from iclvsft.models import model_dir

BIN = Path(sys.executable).parent
TARGET = 1.25
METRIC = re.compile(r"'train_runtime': '?([0-9.eE+-]+)")
LOSS = re.compile(r"'loss': '?([0-9.eE+-]+)")


def bare(prep: Path) -> float:
    """Seconds per sample of a plain loop over prep's data, as resolved.yaml configures training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = yaml.safe_load((prep / "resolved.yaml").read_text())
    torch.manual_seed(cfg.get("seed", 0))
    tok = AutoTokenizer.from_pretrained(cfg["model_name_or_path"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model_name_or_path"], dtype=torch.float32)
    if cfg.get("use_peft"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg["lora_r"],
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=cfg["lora_dropout"],
            target_modules=cfg["lora_target_modules"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    base = model.get_base_model() if cfg.get("use_peft") else model
    backbone, head = base.model, base.get_output_embeddings()
    records = [json.loads(line) for line in (prep / "data" / "train.jsonl").read_text().splitlines()]
    batches = []
    for r in records:  # TRL's layout: prompt ids, then completion + EOS ids, loss on the latter
        prompt = tok(r["prompt"])["input_ids"]
        full = tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]
        batches.append((torch.tensor([full]), len(prompt)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg["learning_rate"]), weight_decay=cfg.get("weight_decay", 0.0))
    accumulation = cfg["gradient_accumulation_steps"]
    model.train()
    start = time.perf_counter()
    for i, (ids, n_prompt) in enumerate(batches):
        hidden = backbone(input_ids=ids).last_hidden_state[0, n_prompt - 1 : -1]  # predicts ids[n_prompt:]
        loss = torch.nn.functional.cross_entropy(head(hidden).float(), ids[0, n_prompt:]) / accumulation
        loss.backward()
        if (i + 1) % accumulation == 0:
            optimizer.step()
            optimizer.zero_grad()
    return (time.perf_counter() - start) / len(batches)


def timed(cmd: list[str], out_dir: Path, samples: int, label: str) -> dict[str, float]:
    """Run ``cmd --output_dir out_dir``, then delete the folder: a full fine-tune's checkpoints are
    ~20 GB per run, and the repeats would fill the disk. Each run's result goes to stderr as it ends."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "--output_dir", str(out_dir)], env={**os.environ, **RUNENV}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    log = proc.stdout + proc.stderr
    runtime = float(METRIC.findall(log)[-1])
    losses = [float(x) for x in LOSS.findall(log)]
    print(f"{label}: {runtime / samples:.3f} s/sample, wall {wall:.0f} s", file=sys.stderr, flush=True)
    return {"s_per_sample": runtime / samples, "wall": wall, "startup": wall - runtime, "losses": losses}


def loss_gap(runs: dict[str, list[dict]]) -> float:
    """Largest relative difference between the bf16 and float32 runs' logged losses, over all repeats."""
    return max(
        abs(b - a) / abs(a)
        for fp32, bf16 in zip(runs["after"], runs["bf16"])
        for a, b in zip(fp32["losses"], bf16["losses"], strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # the bare loop, in its own process
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tasks", default="expression_pattern,relation_pattern")
    parser.add_argument("--recipes", default="lora,full")
    parser.add_argument("--bf16", default="", help="recipes (e.g. lora) for which bf16 training is timed once")
    parser.add_argument("--model", default=str(model_dir("default")))
    args = parser.parse_args()
    if args.bare:
        print(json.dumps({"s_per_sample": bare(args.bare)}))
        return
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        root = Path(tmp)
        for task in args.tasks.split(","):
            for recipe in args.recipes.split(","):
                prep = root / f"{task}-{recipe}"
                common = ["--task", task, "--samples", str(args.samples), "--model_name_or_path", args.model]
                common += ["--recipe", recipe]
                start = time.perf_counter()
                subprocess.run(
                    [str(BIN / "iclvsft-train"), *common, "--output_dir", str(prep), "--dry-run"],
                    env={**os.environ, **RUNENV},
                    check=True,
                    capture_output=True,
                )
                prep_wall = time.perf_counter() - start
                runs: dict[str, list[dict]] = {"before": [], "after": [], "bare": [], "bf16": []}
                # Every step logged, so that the bf16 losses have float32 ones to be compared with.
                train = [str(BIN / "iclvsft-train"), *common, "--logging_steps", "1"]
                for i in range(args.repeats):  # interleaved, so drifting load hits each alike
                    name = f"{task} {recipe} run {i + 1}"
                    after = prep.with_name(f"{prep.name}-after{i}")
                    runs["after"].append(timed(train, after, args.samples, f"{name} after"))
                    if i == 0 and recipe in args.bf16.split(","):  # one run: the decision needs no median
                        bf16 = [*train, "--bf16", "true", "--use_cpu", "true"]
                        runs["bf16"].append(
                            timed(bf16, prep.with_name(f"{prep.name}-bf16{i}"), args.samples, f"{name} bf16")
                        )
                    cmd = [str(BIN / "trl"), "sft", "--config", str(prep / "resolved.yaml")]
                    before = prep.with_name(f"{prep.name}-before{i}")
                    runs["before"].append(timed(cmd, before, args.samples, f"{name} before"))
                    out = subprocess.run(
                        [sys.executable, __file__, "--bare", str(prep)],
                        env={**os.environ, **RUNENV},
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs["bare"].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"{name} bare: {runs['bare'][-1]['s_per_sample']:.3f} s/sample", file=sys.stderr, flush=True)
                rows.append((task, recipe, prep_wall, runs))
                print(task, recipe, json.dumps(runs), file=sys.stderr, flush=True)
    med = statistics.median
    print(
        f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end; {args.samples} samples, "
        f"{args.repeats} run(s) each\n"
    )
    print(
        "| task | recipe | before s/sample (plain trl sft) | after s/sample (iclvsft-train) | bare s/sample | "
        "after / bare | target | before / after | wall before / after s | start-up after s | dry run s |"
        + (" bf16 s/sample | bf16 / after | bf16 loss gap (max rel.) |" if args.bf16 else "")
    )
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.bf16 else ""))
    for task, recipe, prep_wall, runs in rows:
        b, a, x = (med(r["s_per_sample"] for r in runs[k]) for k in ("before", "after", "bare"))
        wall_b, wall_a = (med(r["wall"] for r in runs[k]) for k in ("before", "after"))
        print(
            f"| {task} | {recipe} | {b:.3f} | {a:.3f} | {x:.3f} | {a / x:.2f}× | "
            f"{'met' if a / x <= TARGET else 'MISSED'} | {b / a:.2f}× | {wall_b:.0f} / {wall_a:.0f} | "
            f"{med(r['startup'] for r in runs['after']):.0f} | {prep_wall:.0f} |"
            + (
                f" {med(r['s_per_sample'] for r in runs['bf16']):.3f} | "
                f"{med(r['s_per_sample'] for r in runs['bf16']) / a:.2f}× | {loss_gap(runs):.2e} |"
                if runs["bf16"]
                else " | | |"
                if args.bf16
                else ""
            )
        )


if __name__ == "__main__":
    main()
