"""``iclvsft-train``: fine-tune a causal LM on the pattern tasks through TRL's ``trl sft``.

    iclvsft-train --task parity_pattern --samples 1600 --model_name_or_path PATH --output_dir runs/ft \\
        [--recipe lora|full|paper] [--config my.yaml] [--milestones 100,400,1600] [--resume] \\
        [any other trl sft / accelerate flag]
    iclvsft-train merge --adapter runs/ft/milestones/samples-400 --out runs/ft-400-merged
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from iclvsft_tasks.cliutil import (
    OneLineParser,
    add_split_size_flags,
    add_verbose_flag,
    add_version_flag,
    data_from_flags,
    non_negative_int,
    parse_int_list,
    run_cli,
)
from iclvsft_tasks.data.spec import DEFAULT_SIZES
from iclvsft_train.launch import TrainOptions, recipe_names, run
from iclvsft_train.merge import merge_adapter

PROG = "iclvsft-train"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="Fine-tune a causal LM on the pattern tasks through TRL's trl sft.",
        epilog="Every other flag goes unchanged to `trl sft`, and from there to accelerate.",
    )
    parser.add_argument("--task", required=True, help="task, or several comma-separated to mix (see `iclvsft tasks`)")
    parser.add_argument(
        "--samples", required=True, type=int, help="training samples (distinct items, split evenly across tasks)"
    )
    parser.add_argument("--model_name_or_path", required=True, help="local model directory or hub id")
    parser.add_argument("--output_dir", required=True, help="run folder: data, resolved.yaml, manifest.json, model")
    parser.add_argument("--recipe", default="lora", choices=recipe_names(), help="training defaults (default: lora)")
    parser.add_argument("--config", type=Path, help="your trl sft YAML, applied over the recipe")
    parser.add_argument(
        "--milestones", default="", help="save after exactly these many samples seen, e.g. 100,400,1600"
    )
    parser.add_argument("--train-shots", default="0", help="mix k-shot prompts into training, e.g. 0,1,2,4 (default 0)")
    parser.add_argument("--data-seed", type=non_negative_int, default=0, help="seed of the task splits (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="prepare the run and print the trl command only")
    add_split_size_flags(parser, DEFAULT_SIZES, "must match the evaluation's to guarantee no overlap")
    add_version_flag(parser, ("trl", "transformers", "peft", "accelerate", "torch"))
    add_verbose_flag(parser)  # trl sft has no -v; it is ours and is not passed on
    return parser


def build_merge_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=f"{PROG} merge",
        allow_abbrev=False,
        description="Merge a LoRA adapter into its base model (a plain HF model directory).",
    )
    parser.add_argument("--adapter", required=True, help="adapter directory (a milestone or a run's output_dir)")
    parser.add_argument("--out", required=True, help="directory for the merged model")
    parser.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--dtype", default="float32", help="dtype to merge in (default float32)")
    add_verbose_flag(parser)
    return parser


def _main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "merge":
        args = build_merge_parser().parse_args(argv[1:])
        merge_adapter(args.adapter, args.out, args.base, args.dtype)
        return 0
    args, passthrough = build_parser().parse_known_args(argv)
    options = TrainOptions(
        task=args.task,
        samples=args.samples,
        model=args.model_name_or_path,
        output_dir=Path(args.output_dir),
        recipe=args.recipe,
        config=args.config,
        milestones=tuple(parse_int_list(args.milestones, "--milestones")) if args.milestones else (),
        train_shots=tuple(parse_int_list(args.train_shots, "--train-shots")),
        data=data_from_flags(args, seed=args.data_seed),
        resume=args.resume,
        passthrough=tuple(passthrough),
        dry_run=args.dry_run,
    )
    return run(options)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
