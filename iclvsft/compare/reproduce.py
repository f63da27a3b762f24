"""The ``iclvsft-eval`` command that recomputes one cell of ``iclvsft compare`` on its own.

A cell is one lm-eval run (``run.evaluate_cell``); its command names the same model backend and
arguments (``run.lm_spec``: dtype, extra eval args, ``peft=`` for a LoRA milestone or the milestone
itself as ``pretrained`` for a full fine-tune), the same task variant and shots
(``run.lm_eval_task``), the same items and demonstrations (``--metadata``: seed, split sizes, draw),
seeds, batch size and device, and logs its samples. Paths inside the run folder stay relative to it,
as the records store them, so the command runs from the run folder (wherever it was copied to).

It is derived from a record and the run's settings whenever results are written (``results.json``'s
``reproduce``, a column of ``results.csv``), never stored in the cell records themselves: a stored
cell stays valid whatever this module writes.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iclvsft.compare.config import Experiment
from iclvsft.compare.run import CELLS_DIR, HF_BACKENDS, demo_settings, lm_eval_task, lm_spec
from iclvsft_tasks.cliutil import flag_on
from iclvsft_tasks.errors import IclvsftError, one_line

#: The command that reproduces a cell: lm-eval's CLI with our tasks (``lm_eval`` after ``iclvsft-eval register``).
EVAL_PROG = "iclvsft-eval"
#: Where, relative to the run folder, a reproduced cell's lm-eval output goes (one folder per cell key).
REPRODUCE_DIR = "reproduce"


def _trains_adapter(exp: Experiment, recipe: str | None) -> bool:
    """Whether the fine-tunes of ``recipe`` are LoRA adapters: the recipe's ``use_peft``, or a
    ``--use_peft`` among the experiment's training flags. Read from the settings, not from the milestone
    folder, so that the command is the same whether or not ``ft/`` is on disk."""
    from iclvsft_train.launch import load_recipe

    given = flag_on(exp.train_args, "--use_peft", "--use-peft")
    if given is not None:
        return given
    return bool(load_recipe(recipe or exp.recipes[0]).get("use_peft", False))


def _model_args(args: Mapping[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in args.items())


def reproduce_argv(exp: Experiment, record: Mapping[str, Any], model_path: str, device: str) -> list[str]:
    """``iclvsft-eval``'s arguments that recompute the cell of ``record`` (a stored cell record of a run
    of ``exp``) on ``model_path`` (the run's base model) and ``device``; run from the run folder."""
    try:
        condition, task, split = record["condition"], record["task"], record["split"]
        shots, draw = int(record["shots"]), int(record.get("draw") or 0)
        checkpoint = record.get("checkpoint") if condition == "ft" else None
    except (KeyError, TypeError, ValueError) as exc:
        raise IclvsftError(f"not a cell record of iclvsft compare ({one_line(exc)} missing or wrong)") from None
    if condition == "ft":
        if not checkpoint:
            raise IclvsftError(f"the FT cell {record.get('key', '')} names no checkpoint")
        if _trains_adapter(exp, record.get("recipe")):
            # Built on the adapter in the run folder (vLLM's rank is read from it), then named relative to it.
            in_run = str(Path(exp.out) / str(checkpoint))
            backend, args = lm_spec(exp, model_path, adapter=in_run)
            args = {k: str(checkpoint) if v == in_run else v for k, v in args.items()}
        else:
            backend, args = lm_spec(exp, str(checkpoint))
    else:
        backend, args = lm_spec(exp, model_path)
    from iclvsft_tasks.lm_eval_glue import metadata_for

    name, num_fewshot = lm_eval_task(task, split, shots)
    metadata = metadata_for(exp.data, **demo_settings(draw))
    argv = ["--model", backend, "--model_args", _model_args(args), "--tasks", name]
    if num_fewshot is not None:
        argv += ["--num_fewshot", str(num_fewshot)]
    # evaluate_cell's seeds: python, numpy, torch, and the few-shot sampler's (per-item demonstrations).
    argv += ["--metadata", json.dumps(metadata), "--seed", f"0,1234,1234,{exp.fewshot_seed}"]
    if backend in HF_BACKENDS:
        argv += ["--batch_size", str(exp.batch_size), "--device", device]
    else:
        argv += ["--batch_size", "auto"]
    key = record.get("key") or "cell"
    return argv + ["--log_samples", "--output_path", f"{REPRODUCE_DIR}/{key}"]


def reproduce_command(exp: Experiment, record: Mapping[str, Any], model_path: str, device: str) -> str:
    """The shell command of :func:`reproduce_argv` (``iclvsft-eval ...``, quoted), to run in the run folder."""
    return shlex.join([EVAL_PROG, *reproduce_argv(exp, record, model_path, device)])


def stored_cell_command(exp: Experiment, key: str) -> str:
    """The reproduce command of the cell stored under ``key`` in ``exp.out`` (``cells/<key>.json``),
    for the model of the experiment that the record names."""
    from iclvsft.compare.run import _device
    from iclvsft.models import model_label, resolve_model

    path = Path(exp.out) / CELLS_DIR / f"{key}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IclvsftError(
            f"no cell {key} in {path.parent} (a cell's key is its `key` in results.json; give the run's --out)"
        ) from None
    except (OSError, ValueError) as exc:
        raise IclvsftError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(record, dict):
        raise IclvsftError(f"{path} is not a cell record")
    models = {model_label(m): m for m in exp.models}
    if record.get("model") not in models:
        raise IclvsftError(
            f"cell {key} is of model {record.get('model')!r}, not of this experiment's ({', '.join(models)}): "
            "give the run's --config and --model"
        )
    return reproduce_command(exp, record, resolve_model(models[record["model"]]), _device(exp))
