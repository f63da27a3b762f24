"""``iclvsft``: list the tasks, export their splits, print split fingerprints.

A thin layer: parse, call the library, print. Also ``models``, ``compare`` and ``circuits``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from iclvsft.compare.config import BACKENDS
from iclvsft_tasks.atomic import atomic_open, atomic_write_dir, check_creatable
from iclvsft_tasks.cliutil import (
    OneLineParser,
    add_split_size_flags,
    add_verbose_flag,
    add_version_flag,
    data_from_flags,
    non_negative_int,
    parse_int_list,
    positive_int,
    run_cli,
)
from iclvsft_tasks.data.spec import DEFAULT_SIZES, SPLITS
from iclvsft_tasks.data.splits import SplitSpec, build_splits, draw_splits, fingerprint
from iclvsft_tasks.demos import DEFAULT_DRAWS, DEMO_MODES
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.registry import TASKS, get_task, parse_task_list
from iclvsft_train.checkpoints import DTYPES, DTYPES_OR_AUTO

PROG = "iclvsft"


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help="data seed (default 0)")
    add_split_size_flags(parser, DEFAULT_SIZES, "earlier splits win duplicates, so they shape later ones")


def _spec(args: argparse.Namespace, task: str) -> SplitSpec:
    return data_from_flags(args, seed=args.seed).split_spec(task)


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=total < 50_000 or None, leave=False)


def cmd_tasks(args: argparse.Namespace) -> int:
    width = max(map(len, TASKS))
    for name in TASKS:
        task = get_task(name)
        kinds = "generate" + (", multiple choice" if task.choices else "")
        print(f"{name:<{width}}  {task.description}  [{kinds}]")
    return 0


def _export_trl(args: argparse.Namespace) -> int:
    """The training records of ``iclvsft-train`` as a folder that ``trl sft --dataset_name`` loads as it is."""
    from iclvsft_train.data import DataOptions, build_records, write_records

    if args.split not in (None, "train"):
        raise IclvsftError("--format trl exports fine-tuning data, which comes from the train split; drop --split")
    if args.samples is None:
        raise IclvsftError("--format trl needs --samples (how many training records, as for iclvsft-train)")
    if args.size is not None:
        raise IclvsftError("--format trl takes --samples, not --size (--train-size sets the pool they come from)")
    shots = parse_int_list(args.train_shots, "--train-shots")
    options = DataOptions.create(args.task, args.samples, data_from_flags(args, seed=args.seed), shots)
    out = check_creatable(args.out, "--out")
    with _progress_bar(args.samples, "training records") as bar:
        records = build_records(options, progress=bar.update)
    atomic_write_dir(out, lambda directory: write_records(records, directory))
    print(
        f"wrote {len(records):,} prompt/completion records of {', '.join(options.tasks)} (seed {options.data.seed}) "
        f"to {out}; train on them with: trl sft --dataset_name {out} --model_name_or_path MODEL ...",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "trl":
        return _export_trl(args)
    if args.samples is not None or args.train_shots != "0":
        raise IclvsftError("--samples and --train-shots belong to --format trl")
    args.split = args.split or "test"
    if args.size is not None:
        setattr(args, f"{args.split}_size", args.size)
    tasks = parse_task_list(args.task)
    if len(tasks) != 1:
        raise IclvsftError(f"export writes one task at a time, got {args.task!r}")
    spec = _spec(args, tasks[0])
    out = check_creatable(args.out, "--out", directory=args.format != "jsonl")
    upto = SPLITS.index(args.split)
    total = sum(spec.size(s) for s in SPLITS[: upto + 1])
    with _progress_bar(total, f"{spec.task} {args.split}") as bar:
        items = draw_splits(spec, args.split, progress=bar.update)[args.split]
    if args.format == "jsonl":
        with atomic_open(out) as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    else:
        import datasets

        def fill(directory: Path) -> None:
            datasets.Dataset.from_list(list(items)).save_to_disk(str(directory))

        atomic_write_dir(out, fill)
    print(
        f"wrote {len(items):,} {spec.task} {args.split} items (seed {spec.seed}, "
        f"fingerprint {fingerprint(items)}) to {out}",
        file=sys.stderr,
    )
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    rows = []
    for task in parse_task_list(args.task):
        splits = build_splits(_spec(args, task))
        rows += [
            {"task": task, "split": s, "seed": args.seed, "size": len(items), "fingerprint": fingerprint(items)}
            for s, items in splits.items()
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['task']:<20} {row['split']:<12} seed={row['seed']:<4} n={row['size']:<7} {row['fingerprint']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from iclvsft.models import list_models

    rows = list_models()
    names = {r["alias"]: r["alias"] + "".join(f" = {a}" for a in r.get("aliases", ())) for r in rows}
    width = max(map(len, names.values()))
    for row in rows:
        cached = row.get("cached") or "not converted yet (converted on first use)"
        print(f"{names[row['alias']]:<{width}}  {row['description']}  [licence: {row['license']}]  {cached}")
    return 0


def _parse_eval_args(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    from lm_eval.utils import simple_parse_args_string

    try:
        parsed = simple_parse_args_string(text)
    except Exception:
        parsed = None
    if not isinstance(parsed, dict) or any(not str(key).strip() for key in parsed):
        raise IclvsftError(f"--eval-args must look like key=value,key=value, got {text!r}")
    return parsed


def cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from iclvsft.compare.config import load_experiment
    from iclvsft.compare.run import run_compare

    overrides = {
        "model": args.model,
        "tasks": args.tasks,
        "shots": args.shots,
        "ft_samples": args.ft_samples,
        "recipe": args.recipe,
        "ft_mode": args.ft_mode,
        "train_shots": args.train_shots,
        "test_size": args.test_size,
        "test_broken_size": args.test_broken_size,
        "validation_size": args.validation_size,
        "train_size": args.train_size,
        "seed": args.seed,
        "out": args.out,
        "dtype": args.dtype,
        "device": args.device,
        "batch_size": args.batch_size,
        "jobs": args.jobs,
        "eval_backend": args.eval_backend,
        "eval_args": _parse_eval_args(args.eval_args),
        "demos": args.demos,
        "draws": args.draws,
        "circuits": args.circuits,
        "circuit_items": args.circuit_items,
        "train_args": extra or None,
    }
    if isinstance(overrides["tasks"], str):
        overrides["tasks"] = overrides["tasks"].split(",")
    experiment = load_experiment(args.config, overrides)
    if args.reproduce is not None:
        from iclvsft.compare.reproduce import stored_cell_command

        print(f"cd {shlex.quote(experiment.out)} && {stored_cell_command(experiment, args.reproduce)}")
        return 0
    meta = run_compare(experiment, command=[PROG, *sys.argv[1:]])
    print(meta["summary"])
    out = Path(experiment.out)
    print(
        f"\nreport: {out / 'report.md'}\nresults: {out / 'results.json'}  plots: {out / 'plots'}  "
        f"({meta['wall_time_s']:.0f} s)"
    )
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


def cmd_circuits(args: argparse.Namespace) -> int:
    from iclvsft.circuits import CircuitsConfig, run_circuits
    from iclvsft.circuits.report import verdict_lines

    config = CircuitsConfig(
        model=args.model,
        task=args.task,
        shots=args.shots,
        ft_checkpoint=args.ft_checkpoint,
        items=args.items,
        method=args.method,
        out=args.out,
        check_items=args.check_items,
        dtype=args.dtype,
        device=args.device,
        data=data_from_flags(args, seed=args.seed),
        draw=args.draw,
        bootstrap=args.bootstrap,
        top_fraction=args.top_fraction,
        patch_batch=args.patch_batch,
    )
    result = run_circuits(config)
    out = Path(config.out)
    print("\n".join(verdict_lines(result)))
    print(
        f"\nreport: {out / 'report.md'}\nscores: {out / 'circuits.json'}  heatmaps: {out}/*.png  "
        f"({result['timing']['wall_s']:.0f} s)"
    )
    return 0


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Implicit-pattern tasks: ICL vs fine-tuning.")
    add_version_flag(parser, ("lm_eval", "transformers", "trl", "peft", "torch"))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    tasks = sub.add_parser("tasks", help="list the tasks")
    tasks.set_defaults(run=cmd_tasks)

    data = sub.add_parser("data", help="export splits or print their fingerprints")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    export = data_sub.add_parser(
        "export",
        help="write one split of one task as JSONL or a datasets directory, or fine-tuning records for trl sft",
    )
    export.add_argument(
        "--task", required=True, help="task name (see `iclvsft tasks`); --format trl: several, comma-separated, mix"
    )
    export.add_argument("--split", choices=SPLITS, help="default test (--format trl: train, the only choice)")
    export.add_argument("--size", type=positive_int, help="items in the exported split (default: its default size)")
    export.add_argument("--out", required=True, help="output file (jsonl) or directory (hf, trl)")
    export.add_argument(
        "--format",
        choices=("jsonl", "hf", "trl"),
        default="jsonl",
        help="jsonl: one item per line; hf: a datasets.save_to_disk directory; trl: a directory holding train.jsonl "
        "with the prompt/completion records iclvsft-train trains on, for `trl sft --dataset_name DIR`",
    )
    export.add_argument("--samples", type=positive_int, help="--format trl: training records (as iclvsft-train's)")
    export.add_argument(
        "--train-shots", default="0", help="--format trl: mix k-shot prompts in, e.g. 0,1,2,4 (as iclvsft-train's)"
    )
    _add_split_options(export)
    export.set_defaults(run=cmd_export)

    fp = data_sub.add_parser("fingerprint", help="print a hash of every split's content")
    fp.add_argument("--task", default="all", help="task name(s), comma-separated, or all (default)")
    fp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_split_options(fp)
    fp.set_defaults(run=cmd_fingerprint)

    models = sub.add_parser("models", help="list the built-in model aliases")
    models.set_defaults(run=cmd_models)

    cmp_ = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="ICL by shots vs fine-tuning by samples, on the same held-out items",
        description="Evaluate the base model at every k and fine-tuned checkpoints after every n samples "
        "on identical items; choose k and n on validation; write results, plots and a report. "
        "Flags it does not know go to iclvsft-train (and from there to trl sft / accelerate).",
    )
    cmp_.add_argument("--config", help="experiment YAML, or a shipped one: demo, study, study-gpu")
    cmp_.add_argument(
        "--model",
        help="built-in alias (see `iclvsft models`), local directory or hub id (default: default); "
        "several, comma-separated, compare each on the same items (e.g. default,smollm2-135m)",
    )
    cmp_.add_argument("--tasks", help="comma-separated tasks (default: expression_pattern,parity_pattern)")
    cmp_.add_argument("--shots", help="ICL shot counts, e.g. 0,1,2,4,8,16")
    cmp_.add_argument("--ft-samples", help="fine-tuning milestones in samples seen, e.g. 100,400,1600")
    cmp_.add_argument(
        "--recipe",
        help="iclvsft-train recipe: lora (default), full, paper; several, comma-separated (lora,full), "
        "fine-tune with each and choose n* and the recipe on validation",
    )
    cmp_.add_argument(
        "--ft-mode", choices=("per-task", "mixture"), help="one fine-tune per task (default) or one on the mixture"
    )
    cmp_.add_argument("--train-shots", help="k-shot prompts mixed into fine-tuning data (default 0)")
    add_split_size_flags(cmp_, None, "default: the experiment's")
    cmp_.add_argument("--seed", type=non_negative_int, help="data seed (default 0)")
    cmp_.add_argument("--out", help="output folder (default runs/compare)")
    cmp_.add_argument("--dtype", choices=DTYPES_OR_AUTO)
    cmp_.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    # Counts that must be >= 1 are checked by Experiment, by one rule whether they come from the YAML or a flag.
    cmp_.add_argument("--batch-size", type=non_negative_int)
    cmp_.add_argument(
        "--jobs",
        type=non_negative_int,
        help="worker processes of one torch thread each (OMP_NUM_THREADS if set) for cells and fine-tunes "
        "(default: the physical cores on CPU, 1 on GPU); 1 runs everything in this process. "
        "Results do not depend on it",
    )
    cmp_.add_argument(
        "--demos",
        choices=DEMO_MODES,
        help="fixed (default): one demonstration set per draw for every item, nested across k; "
        "per-item: lm-eval's sampling afresh for each item (the paper's protocol)",
    )
    cmp_.add_argument(
        "--draws", type=non_negative_int, help=f"fixed demonstration sets per k (default {DEFAULT_DRAWS})"
    )
    cmp_.add_argument(
        "--eval-backend",
        choices=BACKENDS,
        help="lm-eval model: iclvsft-hf (default: hf that computes a shared prompt prefix once), "
        "hf, or vllm (prefix caching on)",
    )
    cmp_.add_argument(
        "--eval-args", help="extra model args for the backend, e.g. tensor_parallel_size=2,data_parallel_size=4"
    )
    cmp_.add_argument(
        "--circuits",
        action="store_const",
        const=True,
        default=None,
        help="after the comparison, run the circuit-shift analysis at k* and n* (see `iclvsft circuits`)",
    )
    cmp_.add_argument("--circuit-items", type=non_negative_int, help="pairs for --circuits (default 50)")
    cmp_.add_argument(
        "--reproduce",
        metavar="KEY",
        help="print the iclvsft-eval command that recomputes the stored cell KEY (its key in results.json) of "
        "this experiment's --out, and exit; evaluates nothing",
    )
    cmp_.set_defaults(run=cmd_compare, takes_extra=True)

    circ = sub.add_parser(
        "circuits",
        help="which heads and MLPs ICL and fine-tuning change (circuit shift)",
        description="Score every attention head and MLP by patching clean (pattern) into corrupt "
        "(pattern-broken) items, for the base model at 0 and k shots and a fine-tuned checkpoint at "
        "0 shots, and measure how far ICL and FT move the importance map from the base's.",
    )
    circ.add_argument("--model", default="default", help="base model: built-in alias, local directory or hub id")
    circ.add_argument("--task", required=True, help="task name (see `iclvsft tasks`)")
    circ.add_argument(
        "--shots", type=non_negative_int, default=8, help="demonstrations of the ICL condition (default 8)"
    )
    circ.add_argument(
        "--ft-checkpoint",
        help="fine-tuned model directory or LoRA adapter directory "
        "(e.g. an iclvsft-train milestone); without it FT is not analysed",
    )
    circ.add_argument("--items", type=positive_int, default=50, help="clean/corrupt pairs (default 50)")
    circ.add_argument(
        "--method",
        choices=("attribution", "activation"),
        default="attribution",
        help="attribution patching (default: one backward pass per pair) or exact activation "
        "patching (one forward pass per component; slower)",
    )
    circ.add_argument(
        "--check-items",
        type=non_negative_int,
        default=3,
        help="pairs also scored by the other method, for their Spearman correlation (default 3)",
    )
    circ.add_argument("--out", default="runs/circuits", help="output folder (default runs/circuits)")
    circ.add_argument("--dtype", choices=DTYPES, default="float32")
    circ.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    circ.add_argument("--draw", type=positive_int, default=1, help="fixed demonstration set (default 1)")
    circ.add_argument(
        "--bootstrap", type=positive_int, default=1000, help="bootstrap resamples of the pairs (default 1000)"
    )
    circ.add_argument(
        "--top-fraction",
        type=_fraction,
        default=0.1,
        help="share of components in the top-k sets the Jaccard overlap compares (default 0.1, at least 1)",
    )
    circ.add_argument(
        "--patch-batch", type=positive_int, default=8, help="components per forward pass in activation patching"
    )
    _add_split_options(circ)
    circ.set_defaults(run=cmd_circuits)
    add_verbose_flag(parser)  # on every subcommand too: `iclvsft compare ... -v`
    return parser


def _main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_extra", False):
        return args.run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
