"""Shared-prefix reuse: lm-eval's `hf` backend vs ours (`iclvsft-hf`) on fixed demonstrations.

Side by side in one process, on the same model object, tasks, items and prompts (issue #5):
  hf          lm-eval's HFLM, batch 1: every prompt from its first token;
  iclvsft-hf  ours: the demonstrations (a prefix shared by every prompt) computed once;
  limit       the forward-pass limit for the tokens ours computes: a bare loop that runs the same
              prefix once, then each prompt's remaining tokens on a copy of its cache with logits
              at the last position only, then as many single-token decode steps as ours generated.
Reports wall time, prompt tokens computed, the speed-up, whether every prediction is identical,
and our tokens of new text per second against the limit's.

    .venv/bin/python benchmarks/bench_prefix.py [--model default] [--tasks expression_pattern,relation_pattern]
        [--shots 8,16] [--items 100] [--dtype float32] [--mc]

``--batching`` compares instead how ``iclvsft-hf`` batches a prefix group's prompts: the earlier
scheme (equal-length prompts only, ``pad_batches=False``, ``prefix_batch_size=8``) against batches of
any lengths at each ``--batch-sizes``, alternating the methods within each of ``--reps`` repetitions
(medians reported), with ``hf`` run ``--hf-runs`` times as the reference for the predictions
(``--hf-runs 0``: no ``hf``; the equal-length scheme's first run is the reference):

    .venv/bin/python benchmarks/bench_prefix.py --batching --tasks relation_pattern,code_pattern \
        --shots 8,16 --items 200 --batch-sizes 8,16,32 --reps 3

``--floor`` asks how much faster any method could be: it times the equal-length scheme ("now" in
issue 11) and today's padded batches, alternating within ``--reps`` repetitions, against a lower
bound on the work every correct method does: each prompt's tokens after the shared demonstrations
(the queries) run through the model once, in batches of 32 sorted by length, **without** attending
to the demonstrations (less attention than any correct method), logits at the last position only,
plus one LM-head product per generated token. "now / floor" bounds the speed-up over now:

    .venv/bin/python benchmarks/bench_prefix.py --floor --tasks relation_pattern,code_pattern \
        --shots 8,16 --items 200 --reps 3
"""

# ruff: noqa: E402 - the environment must be set before torch and transformers are imported
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: 2 threads on 2 busy cores ran 6-30x slower
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import argparse
import copy
import datetime
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tasks", default="expression_pattern,relation_pattern")
    parser.add_argument("--shots", default="8,16")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--draw", type=int, default=1)
    parser.add_argument(
        "--mc",
        action="store_true",
        help="the multiple-choice variants instead (loglikelihood requests; binary tasks only)",
    )
    parser.add_argument("--batching", action="store_true", help="equal-length vs padded batches (see above)")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--hf-runs", type=int, default=1)
    parser.add_argument("--floor", action="store_true", help="now vs today vs the least work (see above)")
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
    hf = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)
    ours = IclvsftHFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)
    tm = iclvsft_tasks.task_manager(test_size=args.items, demos="fixed", draw=args.draw)

    def evaluate(lm, name, limit=None):
        start = time.perf_counter()
        result = simple_evaluate(
            model=lm, tasks=[name], task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR"
        )
        return time.perf_counter() - start, result

    tasks = args.tasks.split(",")
    shots = [int(k) for k in args.shots.split(",")]
    if args.mc:
        return loglikelihood_rows(args, tasks, shots, hf, ours, evaluate)
    if args.batching:
        return batching_rows(args, tasks, shots, hf, model, tokenizer, evaluate)
    if args.floor:
        return floor_rows(args, tasks, shots, model, tokenizer, evaluate)
    warm = lm_eval_task(tasks[0], "test", shots[0])[0]
    evaluate(hf, warm, limit=2)  # first calls allocate and pick kernels: keep them out of the timings
    evaluate(ours, warm, limit=2)

    rows = []
    for task in tasks:
        for k in shots:
            name, _ = lm_eval_task(task, "test", k)
            hf_s, hf_res = evaluate(hf, name)
            ours.clear_prefix_cache()
            ours.reset_stats()
            ours_s, ours_res = evaluate(ours, name)
            stats = dict(ours.stats)
            computed = ours.tokens_computed
            hf_samples = sorted(hf_res["samples"][name], key=lambda s: s["doc_id"])
            our_samples = sorted(ours_res["samples"][name], key=lambda s: s["doc_id"])
            same = sum(a["resps"] == b["resps"] for a, b in zip(hf_samples, our_samples))
            prompts = [s["arguments"][0][0] for s in our_samples]
            ids = [tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
            prompt_tokens = sum(i.shape[1] for i in ids)
            generated = stats["generated_tokens"]
            limit_s = bare_loop(model, ids, generated)
            rows.append(
                {
                    "task": name,
                    "n": len(ids),
                    "prompt_tokens": prompt_tokens,
                    "hf_s": hf_s,
                    "ours_s": ours_s,
                    "computed": computed,
                    "stats": stats,
                    "identical": same,
                    "limit_s": limit_s,
                    "acc_hf": hf_res["results"][name]["exact_match,extract"],
                    "acc_ours": ours_res["results"][name]["exact_match,extract"],
                }
            )
            print(rows[-1], flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n# shared-prefix benchmark, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, load average {load:.2f}"
    )
    print(
        f"Model {model_label(args.model)} ({args.dtype}), fixed demonstrations (draw {args.draw}), "
        f"{args.items} test items per task.\n"
    )
    print(
        "| task | prompt tokens/item | hf s | ours s | speed-up | tokens computed (hf → ours) | "
        "identical predictions | accuracy | ours: new tokens/s | limit: new tokens/s | of limit |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["n"]
        hf_tokens = r["prompt_tokens"] + r["stats"]["generated_tokens"]
        print(
            f"| `{r['task']}` | {r['prompt_tokens'] / n:.0f} | {r['hf_s']:.1f} | {r['ours_s']:.1f} | "
            f"{r['hf_s'] / r['ours_s']:.1f}× | {hf_tokens:,} → {r['computed']:,} | {r['identical']}/{n} | "
            f"{r['acc_hf']:.2f} / {r['acc_ours']:.2f} | {r['computed'] / r['ours_s']:.0f} | "
            f"{r['computed'] / r['limit_s']:.0f} | {r['limit_s'] / r['ours_s']:.0%} |"
        )


def batching_rows(args, tasks, shots, hf, model, tokenizer, evaluate) -> None:
    """hf vs iclvsft-hf with equal-length batches vs iclvsft-hf with padded batches, medians of --reps."""
    import statistics

    from iclvsft.compare.run import lm_eval_task
    from iclvsft_tasks.backend.hflm import IclvsftHFLM

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = {"equal-length, 8": IclvsftHFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)}
    methods["equal-length, 8"].pad_batches = False
    for b in sizes:
        methods[f"padded, {b}"] = IclvsftHFLM(
            pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1, prefix_batch_size=b
        )
    warm = lm_eval_task(tasks[0], "test", shots[0])[0]
    for lm in ((hf,) if args.hf_runs else ()) + tuple(methods.values()):
        evaluate(lm, warm, limit=2)

    def predictions(result, name):
        return [s["resps"] for s in sorted(result["samples"][name], key=lambda s: s["doc_id"])]

    rows = []
    for task in tasks:
        for k in shots:
            name, _ = lm_eval_task(task, "test", k)
            hf_times = []
            for _ in range(args.hf_runs):
                seconds, result = evaluate(hf, name)
                hf_times.append(seconds)
            want = predictions(result, name) if hf_times else None
            times: dict[str, list[float]] = {m: [] for m in methods}
            same: dict[str, int] = {}
            for rep in range(args.reps):
                # Alternate the methods, starting each repetition with a different one (load drifts).
                order = list(methods)[rep % len(methods) :] + list(methods)[: rep % len(methods)]
                for m in order:
                    methods[m].clear_prefix_cache()
                    seconds, result = evaluate(methods[m], name)
                    times[m].append(seconds)
                    got = predictions(result, name)
                    want = got if want is None else want
                    same[m] = min(same.get(m, len(got)), sum(a == b for a, b in zip(want, got, strict=True)))
            row = {
                "task": name,
                "n": len(want),
                "hf": statistics.median(hf_times) if hf_times else float("nan"),
                **{m: statistics.median(t) for m, t in times.items()},
                "all": {"hf": hf_times, **times},
                "identical": same,
                "load": os.getloadavg()[0],
            }
            rows.append(row)
            print(row, flush=True)

    print(
        f"\n# iclvsft-hf batching, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; medians of {args.reps} (hf: {args.hf_runs}) runs, "
        f"{args.items} test items per task, fixed demonstrations (draw {args.draw}), {args.dtype}\n"
    )
    base = "equal-length, 8"
    print(
        "| task | `hf` s | " + " | ".join(f"{m} s" for m in methods) + " | speed-up over equal-length, 8 | identical |"
    )
    print("|---|---:|" + "---:|" * len(methods) + "---|---|")
    reference = "hf" if args.hf_runs else base
    for r in rows:
        ups = ", ".join(f"{b}: {r[base] / r[f'padded, {b}']:.2f}×" for b in sizes)
        same = ", ".join(f"{r['identical'][m]}" for m in methods)
        print(
            f"| `{r['task']}` | {r['hf']:.1f} | "
            + " | ".join(f"{r[m]:.1f}" for m in methods)
            + f" | {ups} | {same} of {r['n']} (vs {reference}) |"
        )


def floor_rows(args, tasks, shots, model, tokenizer, evaluate) -> None:
    """The equal-length scheme (now) and padded batches (today) against the least work: medians of --reps."""
    import statistics

    from iclvsft.compare.run import lm_eval_task
    from iclvsft_tasks.backend.hflm import IclvsftHFLM

    now = IclvsftHFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)
    now.pad_batches = False
    methods = {"now": now, "today": IclvsftHFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)}
    warm = lm_eval_task(tasks[0], "test", shots[0])[0]
    for lm in methods.values():
        evaluate(lm, warm, limit=2)
    rows = []
    for task in tasks:
        for k in shots:
            name, _ = lm_eval_task(task, "test", k)
            times: dict[str, list[float]] = {"now": [], "today": [], "floor": []}
            work: dict[str, object] = {}  # today's prompts and generated tokens, for the floor
            answers: dict[str, list] = {}
            for rep in range(args.reps):
                # Rotate the order (load drifts); rep 0 runs today before floor, which needs its prompts.
                order = ["now", "today", "floor"][rep % 3 :] + ["now", "today", "floor"][: rep % 3]
                for m in order:
                    if m == "floor":
                        times[m].append(least_work(model, work["ids"], work["generated"]))
                        continue
                    methods[m].clear_prefix_cache()
                    methods[m].reset_stats()
                    seconds, result = evaluate(methods[m], name)
                    times[m].append(seconds)
                    samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
                    answers[m] = [s["resps"] for s in samples]
                    if m == "today":
                        work["generated"] = methods[m].stats["generated_tokens"]
                        prompts = [s["arguments"][0][0] for s in samples]
                        work["ids"] = [tokenizer(t, return_tensors="pt")["input_ids"] for t in prompts]
            row = {"task": name, **{m: statistics.median(t) for m, t in times.items()}, "all": times}
            row["identical"] = sum(a == b for a, b in zip(answers["now"], answers["today"], strict=True))
            row["load"] = os.getloadavg()[0]
            rows.append(row)
            print(row, flush=True)
    print(
        f"\n# iclvsft-hf against the least work, {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; medians of {args.reps}, "
        f"{args.items} test items per task, fixed demonstrations (draw {args.draw}), {args.dtype}\n"
    )
    print("| task | now (equal-length) s | today (padded) s | floor s | now / today | now / floor (at most) | same |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| `{r['task']}` | {r['now']:.1f} | {r['today']:.1f} | {r['floor']:.1f} | "
            f"{r['now'] / r['today']:.2f}× | {r['now'] / r['floor']:.2f}× | {r['identical']}/{args.items} |"
        )


def least_work(model, ids: list[torch.Tensor], generated: int, batch: int = 32) -> float:
    """Seconds for a lower bound on any method's work: the queries once, without the prefix; LM heads."""
    common = common_prefix(ids)
    queries = sorted((i[0, len(common) :] for i in ids), key=len)
    head = model.get_output_embeddings()
    hidden = torch.zeros(batch, head.in_features, dtype=head.weight.dtype)
    extra = max(0, generated - len(ids))  # decode steps beyond each prompt's first answer token
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(queries), batch):
            rows = queries[b : b + batch]
            width = len(rows[-1])
            input_ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, q in enumerate(rows):
                input_ids[r, : len(q)], mask[r, : len(q)] = q, 1
            model(input_ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        for b in range(0, extra, batch):
            head(hidden[: min(batch, extra - b)])
    return time.perf_counter() - start


def loglikelihood_rows(args, tasks, shots, hf, ours, evaluate) -> None:
    """hf vs ours on the multiple-choice variants: wall time and the largest log-likelihood difference."""
    from iclvsft_tasks.lm_eval_configs import variant_name

    evaluate(hf, variant_name(tasks[0], mc=True, shots=shots[0]), limit=2)
    evaluate(ours, variant_name(tasks[0], mc=True, shots=shots[0]), limit=2)
    print(
        "| task | requests | hf s | ours s | speed-up | largest abs. log-likelihood difference "
        "| same is_greedy | same accuracy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for task in tasks:
        for k in shots:
            name = variant_name(task, mc=True, shots=k)
            hf_s, hf_res = evaluate(hf, name)
            ours.clear_prefix_cache()
            ours_s, our_res = evaluate(ours, name)
            pairs = [
                (a, b)
                for sa, sb in zip(
                    sorted(hf_res["samples"][name], key=lambda s: s["doc_id"]),
                    sorted(our_res["samples"][name], key=lambda s: s["doc_id"]),
                )
                for a, b in zip(sa["resps"], sb["resps"])
            ]
            worst = max(abs(float(a[0][0]) - float(b[0][0])) for a, b in pairs)
            greedy = sum(a[0][1] == b[0][1] for a, b in pairs)
            acc = hf_res["results"][name]["acc,none"], our_res["results"][name]["acc,none"]
            print(
                f"| `{name}` | {len(pairs)} | {hf_s:.1f} | {ours_s:.1f} | {hf_s / ours_s:.1f}× | {worst:.1e} | "
                f"{greedy}/{len(pairs)} | {acc[0]:.2f} / {acc[1]:.2f} |",
                flush=True,
            )


def common_prefix(ids: list[torch.Tensor]) -> torch.Tensor:
    """The token ids every prompt starts with (the demonstrations), leaving each prompt at least one more."""
    common = ids[0][0]
    for i in ids[1:]:
        n = min(len(common), i.shape[1] - 1)
        same = (common[:n] == i[0, :n]).int()
        common = common[: int(same.cumprod(0).sum())]
    return common


def bare_loop(model, ids: list[torch.Tensor], generated: int) -> float:
    """Seconds for the least work that gives the same answers: prefix once, suffixes, decode steps."""
    common = common_prefix(ids)
    steps_per_item = max(0, round(generated / len(ids)) - 1)  # the first token comes from the prefill
    start = time.perf_counter()
    with torch.inference_mode():
        prefix = model(common.unsqueeze(0), use_cache=True, logits_to_keep=1).past_key_values
        for i in ids:
            cache = copy.deepcopy(prefix)
            out = model(i[:, len(common) :], past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps_per_item):
                out = model(token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
