"""iclvsft-train: wrapper overhead against plain ``trl sft``, and the padding share of training batches.

1. Overhead: the same ``trl sft --config resolved.yaml`` run through ``iclvsft-train`` and directly,
   alternating (wrapper, direct, wrapper, direct), on the tiny random Llama of tests/tiny_model.py.
   Reports TRL's own ``train_samples_per_second`` (from the trainer's final log line) and end-to-end
   wall time, medians of the repeats. Target: samples/s overhead <= 5%.
2. Padding: pad tokens / all tokens of the padded micro-batches, for the trainer's default random
   sampler and for ``train_sampling_strategy: group_by_length``, against the paper's pad-to-512.
   Simulated from the exact token lengths TRL trains on, averaged over many random batchings
   (one per torch seed), then cross-checked once against a real SFTTrainer dataloader.
   Target: <= 10%.

Prints a Markdown section for BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_train.py [--samples 1600] [--repeats 2] [--seeds 200]
"""

# ruff: noqa: E402 - the environment must be set before torch and transformers are imported
from __future__ import annotations

import os

# Before torch is imported, here and in every child: offline, one thread (2 threads on 2 cores ran 6x slower).
RUNENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(RUNENV)

import argparse
import datetime
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml

from iclvsft_train import launch

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(sys.executable).parent / "iclvsft-train"
OVERHEAD_TARGET = 0.05
PADDING_TARGET = 0.10
PAPER_PAD_TO = 512
PAD_TASKS = ("parity_pattern", "relation_pattern", "code_pattern")
PAD_SHOTS = ("0", "0,1,2,4")
HEAD = 100  # a small milestone, as in the CLI's example --milestones 100,400,1600
# The trainer's end-of-training log line, e.g. {'train_runtime': '2.556', 'train_samples_per_second': '156.5', ...}
METRIC = re.compile(r"'train_(runtime|samples_per_second)': '?([0-9.eE+-]+)")


# --- 1. wrapper overhead ---------------------------------------------------------------------------------


def timed(cmd: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``cmd`` and the trainer's final metrics parsed from its output."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env={**os.environ, **RUNENV}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    # checkpoints hold trainer_state.json from before these metrics are logged (and the wrapper removes
    # non-milestone checkpoints), so the log line is the one place both runs report them
    metrics = {k: float(v) for k, v in METRIC.findall(proc.stdout + proc.stderr)}
    if "samples_per_second" not in metrics:
        sys.exit(f"no train_samples_per_second in the output of {' '.join(cmd)}")
    return wall, metrics


def overhead(root: Path, model: Path, recipe: str, task: str, samples: int, repeats: int) -> dict:
    args = ["--task", task, "--samples", str(samples), "--model_name_or_path", str(model), "--recipe", recipe]
    prep = root / f"prep-{recipe}"
    # The dry run writes the data and resolved.yaml the direct runs share; its wall time is what the
    # wrapper spends before trl starts (imports, data, config resolution).
    start = time.perf_counter()
    proc = subprocess.run(
        [str(WRAPPER), *args, "--output_dir", str(prep), "--dry-run"],
        env={**os.environ, **RUNENV},
        capture_output=True,
        text=True,
        check=True,
    )
    prep_wall = time.perf_counter() - start
    # The direct command is the plain `trl sft` line the dry run prints (the wrapper runs the same
    # arguments through iclvsft_train.fast_sft); check that it is what launch.trl_command gives.
    printed = shlex.split(proc.stdout.strip().splitlines()[-1])

    def command(out: Path) -> list[str]:
        return [str(WRAPPER.parent / "trl"), "sft", *launch.trl_command(out, ())[len(launch.TRL_COMMAND) :]]

    assert printed[2:] == command(prep)[2:], printed
    resolved = yaml.safe_load((prep / launch.RESOLVED).read_text())
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"wrapper": [], "direct": []}
    for i in range(repeats):  # alternate, so drift in machine load hits both sides alike
        runs["wrapper"].append(timed([str(WRAPPER), *args, "--output_dir", str(root / f"wrapper-{recipe}-{i}")]))
        direct = root / f"direct-{recipe}-{i}"
        direct.mkdir()
        # same resolved config and same data file (dataset_name still points into prep/), fresh output_dir
        (direct / launch.RESOLVED).write_text(yaml.safe_dump({**resolved, "output_dir": str(direct)}, sort_keys=False))
        runs["direct"].append(timed(command(direct)))
    return {
        "recipe": recipe,
        "samples": samples,
        "steps": resolved["max_steps"],
        "prep_wall": prep_wall,
        **{
            f"{side}_{key}": [m[key] if key != "wall" else w for w, m in rs]
            for side, rs in runs.items()
            for key in ("wall", "samples_per_second")
        },
    }


# --- 2. padding ----------------------------------------------------------------------------------------


def token_lengths(train_jsonl: Path, tokenizer, max_length: int) -> list[int]:
    """Lengths exactly as TRL's SFTTrainer builds them: EOS appended to the completion, prompt+completion
    tokenized in one call, truncated to max_length (sft_trainer.py: add_eos, tokenize_fn, truncate)."""
    records = [json.loads(line) for line in train_jsonl.read_text(encoding="utf-8").splitlines()]
    ids = tokenizer([r["prompt"] + r["completion"] + tokenizer.eos_token for r in records])["input_ids"]
    return [min(len(x), max_length) for x in ids]


def pad_fraction(lengths: Sequence[int], order: Sequence[int], per_device: int) -> float:
    """TRL's collator pads each micro-batch to its longest sequence (dataloader_drop_last is False)."""
    pad = total = 0
    for i in range(0, len(order), per_device):
        batch = [lengths[j] for j in order[i : i + per_device]]
        total += max(batch) * len(batch)
        pad += max(batch) * len(batch) - sum(batch)
    return pad / total


def sampler_orders(
    lengths: Sequence[int], per_device: int, accumulation: int, strategy: str, seeds: int
) -> list[list[int]]:
    """Sample orders of ``seeds`` epochs. transformers 5.24 Trainer._get_train_sampler gives RandomSampler for
    "random" and LengthGroupedSampler(train_batch_size * gradient_accumulation_steps) for "group_by_length":
    a random permutation cut into mega-batches of min(n // (4 * batch), 50) batches, each sorted by length,
    longest first; the dataloader then cuts per-device micro-batches from that order."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    gens = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
    if strategy == "random":
        return [torch.randperm(len(lengths), generator=g).tolist() for g in gens]
    return [get_length_grouped_indices(list(lengths), per_device * accumulation, generator=g) for g in gens]


def head_bias(lengths: Sequence[int], orders: Sequence[Sequence[int]], head: int) -> float:
    """Mean length of the first ``head`` samples seen / mean length of all: 1.0 when a milestone at ``head``
    samples has seen an unbiased subset; sorting within mega-batches pushes it up."""
    return statistics.mean(statistics.mean(lengths[i] for i in o[:head]) for o in orders) / statistics.mean(lengths)


def trainer_check(prep: Path, model: Path, strategy: str) -> tuple[float, list[int]]:
    """Padding of one pass of a real SFTTrainer train dataloader built from resolved.yaml, and its lengths."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer
    from trl.scripts.sft import make_parser

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sft_args, *_ = make_parser().parse_args_and_config(
            ["--config", str(prep / launch.RESOLVED), "--output_dir", scratch, "--train_sampling_strategy", strategy],
            return_remaining_strings=True,
        )
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(model),
            args=sft_args,
            processing_class=AutoTokenizer.from_pretrained(model),
            train_dataset=Dataset.from_json(str(prep / "data" / "train.jsonl")),
        )
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        pad = total = 0
        for batch in trainer.get_train_dataloader():
            mask = batch["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
    return pad / total, lengths


def padding(root: Path, model: Path, samples: int, seeds: int) -> tuple[list[dict], str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    geometry = {
        r: (c["per_device_train_batch_size"], c["gradient_accumulation_steps"])
        for r, c in ((r, launch.load_recipe(r)) for r in ("lora", "paper"))
    }  # full has lora's geometry
    rows, chars, tokens = [], 0, 0
    for task in PAD_TASKS:
        for shots in PAD_SHOTS:
            prep = root / f"pad-{task}-{shots.replace(',', '')}"
            launch.prepare(
                launch.TrainOptions(
                    task=task,
                    samples=samples,
                    model=str(model),
                    output_dir=prep,
                    train_shots=tuple(int(s) for s in shots.split(",")),
                    dry_run=True,
                )
            )
            resolved = yaml.safe_load((prep / launch.RESOLVED).read_text())
            train_jsonl = prep / "data" / "train.jsonl"
            lengths = token_lengths(train_jsonl, tokenizer, resolved["max_length"])
            chars += sum(len(r["prompt"] + r["completion"]) + 1 for r in map(json.loads, train_jsonl.open()))
            tokens += sum(lengths)
            row = {"task": task, "shots": shots, "prep": prep, "lengths": lengths}
            for key, (per_device, accumulation), strategy in (
                ("random", geometry["lora"], "random"),
                ("group_lora", geometry["lora"], "group_by_length"),
                ("group_paper", geometry["paper"], "group_by_length"),
            ):
                orders = sampler_orders(lengths, per_device, accumulation, strategy, seeds)
                row[key] = [pad_fraction(lengths, o, per_device) for o in orders]
                if key == "group_lora":
                    row["head_bias"] = head_bias(lengths, orders, HEAD)
            row["pad512"] = 1 - sum(min(n, PAPER_PAD_TO) for n in lengths) / (PAPER_PAD_TO * len(lengths))
            rows.append(row)
    # Cross-check the simulation against the trainer itself on the widest length spread.
    widest = max(rows, key=lambda r: statistics.pstdev(r["lengths"]))
    checks = []
    for strategy, key in (("random", "random"), ("group_by_length", "group_lora")):
        frac, trl_lengths = trainer_check(widest["prep"], model, strategy)
        assert trl_lengths == widest["lengths"], "token lengths differ from TRL's"
        lo, hi = min(widest[key]), max(widest[key])
        checks.append(f"{strategy} {frac:.1%} (simulated range {lo:.1%}-{hi:.1%})")
    note = (
        f"Cross-check on {widest['task']} with shots {widest['shots']}: SFTTrainer's own tokenized lengths equal "
        f"the simulation's; one pass of its train dataloader (lora recipe) pads {'; '.join(checks)}. "
        f"The tiny BPE tokenizer spends {chars / tokens:.2f} characters per token; a real model's tokenizer "
        f"gives shorter sequences, so more of each pad-to-{PAPER_PAD_TO} batch would be padding, while "
        f"longest-in-batch padding depends on the relative spread of lengths."
    )
    return rows, note


# --- report ----------------------------------------------------------------------------------------------


def pct(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1600, help="samples per overhead run (multiple of 4)")
    parser.add_argument("--task", default="parity_pattern", help="task of the overhead runs")
    parser.add_argument("--recipes", default="lora,full", help="recipes of the overhead runs")
    parser.add_argument(
        "--repeats", type=int, default=3, help="wrapper/direct pairs per recipe (2 proved too noisy here)"
    )
    parser.add_argument("--pad-samples", type=int, default=1600, help="samples per padding configuration")
    parser.add_argument("--seeds", type=int, default=200, help="random batchings averaged for padding")
    args = parser.parse_args()

    import torch
    import transformers
    import trl

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_model import build_tiny_llama

    load_start = os.getloadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "tiny-llama")
        n_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(model).parameters())
        vocab = len(transformers.AutoTokenizer.from_pretrained(model))
        results = [overhead(root, model, r, args.task, args.samples, args.repeats) for r in args.recipes.split(",")]
        pad_rows, pad_note = padding(root, model, args.pad_samples, args.seeds)
    load_end = os.getloadavg()
    med = statistics.median

    print(
        f"## Training wrapper: overhead and padding\n\n"
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS=1 (torch "
        f"threads {torch.get_num_threads()}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, trl {trl.__version__}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {time.perf_counter() - began:.0f} s in all.\n"
        f"Model: the tiny random Llama of `tests/tiny_model.py` ({n_params:,} parameters, BPE vocabulary of "
        f"{vocab}). `benchmarks/bench_train.py`.\n"
    )

    print(
        f"### Wrapper overhead (target: samples/s overhead ≤ {OVERHEAD_TARGET:.0%})\n\n"
        f"`iclvsft-train --task {args.task} --samples {args.samples}` against the same `trl sft --config "
        f"resolved.yaml` run directly (same data, fresh output_dir), alternating wrapper/direct, "
        f"{args.repeats} runs each, medians (runs in brackets, in order). samples/s is TRL's "
        f"`train_samples_per_second`; wall time is end to end. Overhead = direct / wrapper − 1 for samples/s, "
        f"wrapper / direct − 1 for wall time.\n"
    )
    print(
        "| recipe | steps | wrapper samples/s | direct samples/s | samples/s overhead (median; best) | "
        "wrapper wall s | direct wall s | wall overhead | wrapper before trl starts (dry run) s | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        ws, ds = med(r["wrapper_samples_per_second"]), med(r["direct_samples_per_second"])
        ww, dw = med(r["wrapper_wall"]), med(r["direct_wall"])

        def runs(xs: list[float], f: str) -> str:
            return f"{f.format(med(xs))} ({', '.join(f.format(x) for x in xs)})"

        print(
            f"| {r['recipe']} | {r['steps']} | {runs(r['wrapper_samples_per_second'], '{:.1f}')} | "
            f"{runs(r['direct_samples_per_second'], '{:.1f}')} | {ds / ws - 1:+.1%}; "
            f"{max(r['direct_samples_per_second']) / max(r['wrapper_samples_per_second']) - 1:+.1%} | "
            f"{runs(r['wrapper_wall'], '{:.1f}')} | {runs(r['direct_wall'], '{:.1f}')} | "
            f"{ww - dw:+.1f} s ({ww / dw - 1:+.1%}) | "
            f"{r['prep_wall']:.1f} | {'met' if ds / ws - 1 <= OVERHEAD_TARGET else 'MISSED'} |"
        )

    geometry = {r: launch.load_recipe(r) for r in ("lora", "paper")}
    g = {r: f"{c['per_device_train_batch_size']}×{c['gradient_accumulation_steps']}" for r, c in geometry.items()}
    print(
        f"\n### Padding (target: ≤ {PADDING_TARGET:.0%} of batch tokens)\n\n"
        f"{args.pad_samples} training samples per row (default split sizes), tokenized as TRL does "
        f"(prompt + completion + EOS), micro-batches of {geometry['lora']['per_device_train_batch_size']} padded "
        f"to their longest. Mean (min-max) over {args.seeds} random batchings (torch seeds "
        f"0-{args.seeds - 1}) of the trainer's samplers: `random` (RandomSampler, the default) and "
        f"`group_by_length` (LengthGroupedSampler over per-device × accumulation; lora and full are "
        f"{g['lora']}, paper is {g['paper']}). Last column: every sample padded to {PAPER_PAD_TO}, as the paper's "
        f"authors did.\n"
    )
    print(
        f"| task | train shots | tokens mean (min-max) | random | group_by_length {g['lora']} (lora, full) | "
        f"group_by_length {g['paper']} (paper) | padded to {PAPER_PAD_TO} | random meets target | "
        f"group_by_length {g['lora']}: first {HEAD} samples' mean length ÷ data mean |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for r in pad_rows:
        n = r["lengths"]
        over = sum(x > PAPER_PAD_TO for x in n)
        print(
            f"| {r['task']} | {r['shots']} | {statistics.mean(n):.0f} ({min(n)}-{max(n)}) | {pct(r['random'])} | "
            f"{pct(r['group_lora'])} | {pct(r['group_paper'])} | {r['pad512']:.1%}"
            f"{f' ({over} longer)' if over else ''} | "
            f"{'met' if statistics.mean(r['random']) <= PADDING_TARGET else 'MISSED'} | {r['head_bias']:.2f} |"
        )
    print(f"\n{pad_note}")


if __name__ == "__main__":
    main()
