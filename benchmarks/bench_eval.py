"""Evaluation speed of our lm-eval tasks against the authors' loop and the model's forward-pass limit.

On the same items, model, shots, dtype and thread count, measured side by side in one process:
  ours      our registered task through lm-eval, as `iclvsft compare` runs it: by default the
            `iclvsft-hf` backend on fixed demonstrations (`--backend hf --demos per-item` gives
            lm-eval's `hf` backend, batch 1, on per-item demonstrations: issue #4's first measurement);
  authors'  the authors' per-item loop: `model.generate(input_ids, max_new_tokens=L)`, batch 1,
            on the very prompts lm-eval built (so both see identical token counts);
  limit     one forward pass per prompt that computes logits only at the last position: the
            prompt tokens/s the model can do at all.
Targets (issue #4): ours >= 1.0x the authors' loop; ours >= 70% of the limit in prompt tokens/s.

    .venv/bin/python benchmarks/bench_eval.py [--model default] [--task expression_pattern] [--shots 8]
        [--items 100] [--dtype float32] [--backend iclvsft-hf|hf] [--demos fixed|per-item]
"""

# ruff: noqa: E402 - the environment must be set before torch and transformers are imported
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: 2 threads on 2 busy cores ran 6-30x slower
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import argparse
import datetime
import platform
import statistics
import time

import torch

# Authors' max_new_tokens per task (their test.py); unknown tasks get ours.
AUTHORS_NEW_TOKENS = {"expression_pattern": 3, "code_pattern": 2, "relation_pattern": 2, "boolean_pattern": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="expression_pattern")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="iclvsft-hf", choices=("iclvsft-hf", "hf"))
    parser.add_argument("--demos", default="fixed", choices=("fixed", "per-item"))
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate the three methods this many times and report medians (noisy machines)",
    )
    args = parser.parse_args()

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import iclvsft_tasks
    from iclvsft.compare.run import lm_eval_task
    from iclvsft.models import model_label, resolve_model
    from iclvsft_tasks.backend.hflm import IclvsftHFLM

    path = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    backend = IclvsftHFLM if args.backend == "iclvsft-hf" else HFLM
    lm = backend(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)
    tm = iclvsft_tasks.task_manager(test_size=max(args.items, 1), demos=args.demos)
    name, num_fewshot = lm_eval_task(args.task, "test", args.shots)

    # Warm-up outside the timings (first calls allocate and compile kernels).
    simple_evaluate(
        model=lm, tasks=[name], task_manager=tm, num_fewshot=num_fewshot, limit=2, bootstrap_iters=0, verbosity="ERROR"
    )

    def run_ours():
        return simple_evaluate(
            model=lm,
            tasks=[name],
            task_manager=tm,
            num_fewshot=num_fewshot,
            limit=args.items,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )

    result = run_ours()  # also yields the prompts the other two methods reuse
    samples = result["samples"][name]
    prompts = [s["arguments"][0][0] for s in samples]
    encoded = [torch.tensor([lm.tok_encode(p)]) for p in prompts]
    prompt_tokens = sum(e.shape[1] for e in encoded)
    generated_ours = sum(len(lm.tok_encode(s["resps"][0][0], add_special_tokens=False)) + 1 for s in samples)
    new_tokens = AUTHORS_NEW_TOKENS.get(args.task, iclvsft_tasks.get_task(args.task).max_answer_tokens)

    def run_authors():
        with torch.inference_mode():
            for ids in encoded:
                out = model.generate(
                    ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
                )
                tokenizer.decode(out[0, ids.shape[1] :])

    def run_limit():
        with torch.inference_mode():
            for ids in encoded:
                model(ids, logits_to_keep=1)

    timings: dict[str, list[float]] = {"ours": [], "authors": [], "limit": []}
    for _ in range(max(1, args.repeats)):  # alternate, so slow phases of a shared machine hit all three
        for label, fn in (("ours", run_ours), ("authors", run_authors), ("limit", run_limit)):
            start = time.perf_counter()
            fn()
            timings[label].append(time.perf_counter() - start)
    ours_s, authors_s, limit_s = (statistics.median(timings[k]) for k in ("ours", "authors", "limit"))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    n = len(prompts)
    print(
        f"# evaluation benchmark, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, load average {load:.2f}"
    )
    print(
        f"\nModel {model_label(args.model)} ({args.dtype}), ours = `{args.backend}` with {args.demos} demonstrations, "
        f"task {name}, {n} test items at {args.shots} shots, "
        f"{prompt_tokens / n:.0f} prompt tokens per item; ours generated {generated_ours / n:.1f} tokens per item "
        f"(stop at newline), the authors' loop {new_tokens}. Medians of {max(1, args.repeats)} alternating runs "
        f"(seconds: {', '.join(f'{k} {[round(t, 1) for t in v]}' for k, v in timings.items())}).\n"
    )
    print("| method | wall s | items/s | prompt tokens/s | vs authors' loop | vs forward limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seconds in (
        (f"ours: lm-eval, `{args.backend}` backend", ours_s),
        (f"authors' loop: generate(max_new_tokens={new_tokens}), batch 1", authors_s),
        ("forward-pass limit: one pass, last-position logits", limit_s),
    ):
        print(
            f"| {label} | {seconds:.1f} | {n / seconds:.2f} | {prompt_tokens / seconds:.0f} | "
            f"{authors_s / seconds:.2f}x | {limit_s / seconds:.0%} |"
        )
    print(f"\nexact match (ours): {result['results'][name]['exact_match,extract']:.3f}")


if __name__ == "__main__":
    main()
