"""``iclvsft``: list the tasks, export their splits, print split fingerprints.

A thin layer: parse, call the library, print. Later issues add ``compare`` and ``models`` here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_open, atomic_write_dir
from .errors import IclvsftError
from .cliutil import OneLineParser, positive_int, run_cli
from .registry import TASKS, get_task, parse_task_list
from .splits import DEFAULT_SIZES, SPLITS, SplitSpec, build_splits, draw_splits, fingerprint

PROG = "iclvsft"


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    group = parser.add_argument_group("split sizes (earlier splits win duplicates, so they shape later ones)")
    for split in SPLITS:
        flag = "--" + split.replace("_", "-") + "-size"
        group.add_argument(flag, type=positive_int, default=DEFAULT_SIZES[split], dest=f"{split}_size",
                           help=f"default {DEFAULT_SIZES[split]:,}")


def _spec(args: argparse.Namespace, task: str) -> SplitSpec:
    return SplitSpec(task, seed=args.seed, **{f"{s}_size": getattr(args, f"{s}_size") for s in SPLITS})


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


def cmd_export(args: argparse.Namespace) -> int:
    if args.size is not None:
        setattr(args, f"{args.split}_size", args.size)
    tasks = parse_task_list(args.task)
    if len(tasks) != 1:
        raise IclvsftError(f"export writes one task at a time, got {args.task!r}")
    spec = _spec(args, tasks[0])
    upto = SPLITS.index(args.split)
    total = sum(spec.size(s) for s in SPLITS[: upto + 1])
    with _progress_bar(total, f"{spec.task} {args.split}") as bar:
        items = draw_splits(spec, args.split, progress=bar.update)[args.split]
    out = Path(args.out)
    if args.format == "jsonl":
        with atomic_open(out) as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    else:
        import datasets

        def fill(directory: Path) -> None:
            datasets.Dataset.from_list(list(items)).save_to_disk(str(directory))

        atomic_write_dir(out, fill)
    print(f"wrote {len(items):,} {spec.task} {args.split} items (seed {spec.seed}, "
          f"fingerprint {fingerprint(items)}) to {out}", file=sys.stderr)
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    rows = []
    for task in parse_task_list(args.task):
        splits = build_splits(_spec(args, task))
        rows += [{"task": task, "split": s, "seed": args.seed, "size": len(items), "fingerprint": fingerprint(items)}
                 for s, items in splits.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['task']:<20} {row['split']:<12} seed={row['seed']:<4} n={row['size']:<7} {row['fingerprint']}")
    return 0


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Implicit-pattern tasks: ICL vs fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    tasks = sub.add_parser("tasks", help="list the tasks")
    tasks.set_defaults(run=cmd_tasks)

    data = sub.add_parser("data", help="export splits or print their fingerprints")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    export = data_sub.add_parser("export", help="write one split of one task as JSONL or a datasets directory")
    export.add_argument("--task", required=True, help="task name (see `iclvsft tasks`)")
    export.add_argument("--split", default="test", choices=SPLITS)
    export.add_argument("--size", type=positive_int, help="items in the exported split (default: its default size)")
    export.add_argument("--out", required=True, help="output file (jsonl) or directory (hf)")
    export.add_argument("--format", choices=("jsonl", "hf"), default="jsonl",
                        help="jsonl: one item per line; hf: a datasets.save_to_disk directory")
    _add_split_options(export)
    export.set_defaults(run=cmd_export)

    fp = data_sub.add_parser("fingerprint", help="print a hash of every split's content")
    fp.add_argument("--task", default="all", help="task name(s), comma-separated, or all (default)")
    fp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_split_options(fp)
    fp.set_defaults(run=cmd_fingerprint)
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
