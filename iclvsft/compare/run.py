"""``iclvsft compare``: the base model at k shots vs fine-tuned checkpoints after n samples.

The run is a list of *cells* (condition, task, split, shots or samples), each evaluated through
lm-eval with our registered tasks, so a cell's accuracy is exactly what ``iclvsft-eval`` reports.
Every finished cell is stored under a key made of everything that determines it (model, task,
condition, shots/samples, seeds, split fingerprint, dtype, backend, training config), so a rerun
skips finished cells, a killed run resumes, and a changed generator (a new fingerprint) makes new
cells instead of mixing with old ones.

Order: plan (all checks, nothing evaluated), ICL cells on the base model, then per fine-tune:
train (or resume) with ``iclvsft-train``, evaluate each milestone at 0 shots. With ``jobs`` > 1 the
same work runs in worker processes instead (``iclvsft.compare.jobs``), with the same cells and keys.
Finally the validation split chooses the reported k and n, and results, plots and the report are written;
with ``circuits`` on, the circuit-shift analysis runs at k* and n* first and the report ends with its section.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclvsft.compare.config import Experiment
from iclvsft_tasks.atomic import atomic_open, atomic_write_text, ensure_output_dir
from iclvsft_tasks.cliutil import pin_cpu_threads, resolve_device
from iclvsft_tasks.data.spec import HELD_OUT_SPLITS
from iclvsft_tasks.data.splits import fingerprints
from iclvsft_tasks.demos import fixed_demo_ids
from iclvsft_tasks.errors import IclvsftError, one_line
from iclvsft_tasks.lm_eval_configs import SHOTS, variant_name
from iclvsft_tasks.lm_eval_glue import BACKEND_NAME
from iclvsft_train.checkpoints import load_causal_lm, load_config

if TYPE_CHECKING:  # the training add-on is an optional extra, imported where a fine-tune needs it
    from iclvsft_train.run_state import TrainingRun

#: Backends built on lm-eval's HFLM (same arguments; ours adds shared-prefix KV reuse).
HF_BACKENDS = (BACKEND_NAME, "hf")
CELLS_DIR = "cells"
PREDICTIONS_DIR = "predictions"
FT_DIR = "ft"


@dataclasses.dataclass(frozen=True)
class Training:
    """One fine-tuning run of ``iclvsft-train`` (per task, or one mixture)."""

    name: str
    tasks: tuple[str, ...]
    directory: Path
    config_hash: str


@dataclasses.dataclass(frozen=True)
class Cell:
    condition: str  # "icl" | "ft"
    task: str
    split: str
    shots: int
    ft_samples: int
    training: Training | None = None
    draw: int = 0  # fixed demonstration set 1..R; 0: per-item demonstrations, or none (k=0, FT)

    @property
    def demos(self) -> str | None:
        """The demonstration mode that determines the cell (None at 0 shots: no demonstrations)."""
        return None if self.shots == 0 else ("fixed" if self.draw else "per-item")

    def key(self, context: dict[str, Any]) -> str:
        payload = {
            **context,
            "condition": self.condition,
            "task": self.task,
            "split": self.split,
            "shots": self.shots,
            "ft_samples": self.ft_samples,
            "training": self.training.config_hash if self.training else None,
        }
        if self.shots:  # 0-shot cells stay valid whatever the demonstration mode
            payload.update({"demos": self.demos, "draw": self.draw})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def lm_eval_task(task: str, split: str, shots: int) -> tuple[str, int | None]:
    """Registered task name for a cell, and a num_fewshot override when k has no variant of its own."""
    if shots in SHOTS:
        return variant_name(task, shots=shots, split=split), None
    return variant_name(task, split=split), shots


def lm_spec(exp: Experiment, model_path: str, adapter: str | None = None) -> tuple[str, dict[str, Any]]:
    """lm-eval model name and arguments for the chosen backend (``adapter``: a LoRA directory)."""
    args: dict[str, Any] = {"pretrained": model_path, "dtype": exp.dtype}
    if exp.eval_backend in HF_BACKENDS:
        if adapter:
            args["peft"] = adapter
        return exp.eval_backend, {**args, **exp.eval_args}
    # vLLM through lm-eval's own backend: tensor/data parallel sizes and engine options pass through;
    # prefix caching makes vLLM compute the demonstrations shared by many prompts once.
    args.update({"tensor_parallel_size": 1, "data_parallel_size": 1, "enable_prefix_caching": True})
    if adapter:
        rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16)
        args.update({"lora_local_path": adapter, "max_lora_rank": max(16, int(rank))})
    return "vllm", {**args, **exp.eval_args}


def _device(exp: Experiment) -> str:
    return resolve_device(exp.device)


def load_lm(exp: Experiment, model_path: str, adapter: str | None = None):
    """An lm-eval LM object, built once and reused for every cell it serves."""
    from lm_eval.api.registry import get_model

    name, args = lm_spec(exp, model_path, adapter)
    hf = name in HF_BACKENDS
    extra = {"batch_size": exp.batch_size if hf else "auto", "device": _device(exp) if hf else None}
    if name == BACKEND_NAME:
        from iclvsft_tasks.lm_eval_glue import register_backend

        register_backend()
    if hf and adapter:
        # The model of ``pretrained=BASE,peft=ADAPTER`` (with the base's tokenizer, as lm-eval takes it)
        # with the adapter merged in: no PEFT detour in every layer at every decode step.
        model, tokenizer = load_causal_lm(
            model_path, adapter=adapter, dtype=exp.dtype, device=extra["device"], tokenizer=model_path
        )
        args = {k: v for k, v in args.items() if k not in ("pretrained", "peft", "dtype")}
        args.update(pretrained=model, tokenizer=tokenizer)
    try:
        return get_model(name).create_from_arg_obj(args, extra)
    except Exception as exc:
        raise IclvsftError(
            f"cannot load model {model_path}{' with adapter ' + adapter if adapter else ''}: {one_line(exc)}"
        ) from None


def _prompt_of(sample: dict[str, Any]) -> str:
    arguments = sample["arguments"]
    if isinstance(arguments, dict):  # the JSON form of logged samples
        return arguments["gen_args_0"]["arg_0"]
    return arguments[0][0]


def evaluate_cell(lm: Any, task_manager: Any, exp: Experiment, cell: Cell) -> tuple[dict[str, Any], list[dict]]:
    """Run one cell through lm-eval; returns its record (without key/paths) and per-item predictions.

    ``task_manager`` must carry the cell's demonstrations (``demos``/``draw`` metadata).
    """
    from lm_eval import simple_evaluate

    name, num_fewshot = lm_eval_task(cell.task, cell.split, cell.shots)
    start = time.perf_counter()
    result = simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=task_manager,
        num_fewshot=num_fewshot,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=exp.fewshot_seed,
        verbosity="ERROR",
    )
    wall = time.perf_counter() - start
    samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
    predictions = [
        {
            "id": s["doc"]["id"],
            "answer": s["doc"]["answer"],
            "prediction": s["filtered_resps"][0],
            "raw": s["resps"][0][0],
            "correct": bool(s["exact_match"]),
        }
        for s in samples
    ]
    prompt_tokens = sum(len(lm.tok_encode(_prompt_of(s))) for s in samples)
    if cell.draw:
        demo_ids = fixed_demo_ids(exp.data.split_spec(cell.task), cell.draw, cell.shots)
        for prediction in predictions:
            prediction["demo_ids"] = demo_ids
    correct = sum(p["correct"] for p in predictions)
    accuracy = result["results"][name]["exact_match,extract"]
    if abs(accuracy - correct / max(len(predictions), 1)) > 1e-9:
        raise AssertionError(f"{name}: lm-eval's accuracy {accuracy} disagrees with the per-item predictions")
    from iclvsft.compare.stats import wilson_interval

    low, high = wilson_interval(correct, len(predictions))
    record = {
        "condition": cell.condition,
        "task": cell.task,
        "split": cell.split,
        "shots": cell.shots,
        "ft_samples": cell.ft_samples,
        "draw": cell.draw,
        "demos": cell.demos,
        "n": len(predictions),
        "correct": correct,
        "accuracy": correct / max(len(predictions), 1),
        "ci_low": low,
        "ci_high": high,
        "prompt_tokens": prompt_tokens,
        "wall_time_s": round(wall, 3),
        "lm_eval_task": name,
    }
    if cell.draw:
        record["demo_ids"] = demo_ids
    return record, predictions


class CellStore:
    """Finished cells on disk: ``cells/<key>.json`` is written last, so its presence means done."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def record_path(self, key: str) -> Path:
        return self.out / CELLS_DIR / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.record_path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # unreadable: evaluate again

    def put(self, key: str, record: dict[str, Any], predictions: list[dict]) -> dict[str, Any]:
        rel = f"{PREDICTIONS_DIR}/{key}.jsonl"
        with atomic_open(self.out / rel) as handle:
            for row in predictions:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        record = {**record, "key": key, "predictions": rel}
        atomic_write_text(self.record_path(key), json.dumps(record, indent=1, sort_keys=True) + "\n")
        return record


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every cell of one run shares: picklable, so that worker processes get it whole."""

    exp: Experiment
    out: Path
    model_path: str
    label: str
    context: dict[str, Any]  # the key fields shared by every cell (model, seeds, dtype, backend)
    split_fps: dict[str, dict[str, str]]  # task -> split -> fingerprint

    def key_of(self, cell: Cell) -> str:
        return cell.key({**self.context, "fingerprint": self.split_fps[cell.task][cell.split]})


class CellRunner:
    """Evaluates cells and stores each as it finishes; one per process (it caches lm-eval TaskManagers)."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.store = CellStore(run.out)
        self._managers: dict[int, Any] = {}

    def manager_for(self, cell: Cell) -> Any:
        """One lm-eval TaskManager per demonstration draw (its metadata selects the draw)."""
        from iclvsft_tasks.lm_eval_glue import task_manager

        if cell.draw not in self._managers:
            demos = {"demos": "fixed", "draw": cell.draw} if cell.draw else {}
            self._managers[cell.draw] = task_manager(data=self.run.exp.data, **demos)
        return self._managers[cell.draw]

    def evaluate(self, cell: Cell, lm: Any, extra: dict[str, Any]) -> dict[str, Any]:
        """Evaluate ``cell`` with ``lm`` and store it; returns its stored record."""
        run = self.run
        record, predictions = evaluate_cell(lm, self.manager_for(cell), run.exp, cell)
        record.update(
            {"model": run.label, "seed": run.exp.data.seed, "fingerprint": run.split_fps[cell.task][cell.split]}
        )
        record.update(extra)
        return self.store.put(run.key_of(cell), record, predictions)


def milestone_lm(exp: Experiment, model_path: str, trained: TrainingRun, samples: int) -> tuple[Any, dict[str, Any]]:
    """The model of a finished fine-tune's milestone, and the fields its cells' records add."""
    milestone = trained.milestone(samples)
    path = str(milestone.path)
    lm = load_lm(exp, model_path, adapter=path) if milestone.adapter else load_lm(exp, path)
    return lm, {"train_tokens": milestone.training_tokens(), "checkpoint": path}


def icl_label(cell: Cell) -> str:
    """The bar's note for an ICL cell."""
    return f"ICL {cell.task} k={cell.shots}{f' draw {cell.draw}' if cell.draw else ''} {cell.split}"


def ft_label(cell: Cell) -> str:
    """The bar's note for an FT cell."""
    return f"FT {cell.task} n={cell.ft_samples} {cell.split}"


def _trainings(exp: Experiment, model_id: dict[str, Any], out: Path) -> list[Training]:
    if not exp.ft_samples:
        return []
    groups = [tuple(exp.tasks)] if exp.ft_mode == "mixture" else [(t,) for t in exp.tasks]
    trainings = []
    for tasks in groups:
        config = {
            "model": model_id,
            "tasks": tasks,
            "seed": exp.data.seed,
            "sizes": exp.data.sizes,
            "recipe": exp.recipe,
            "train_shots": exp.train_shots,
            "samples": max(exp.ft_samples),
            "milestones": exp.ft_samples,
            "train_args": exp.train_args,
            "dtype": exp.dtype,
        }
        config_hash = _hash(config)
        name = ("mixture" if len(tasks) > 1 else tasks[0]) + f"-{exp.recipe}-{config_hash}"
        trainings.append(Training(name, tasks, out / FT_DIR / name, config_hash))
    return trainings


def _train_options(exp: Experiment, model_path: str, training: Training, extra: Sequence[str] = ()):
    from iclvsft_train.launch import TrainOptions

    passthrough = list(exp.train_args)
    if exp.dtype in ("bfloat16", "float16") and "--dtype" not in passthrough:
        passthrough += ["--dtype", exp.dtype]  # the weights' dtype; mixed precision stays the recipe's
    return TrainOptions(
        task=",".join(training.tasks),
        samples=max(exp.ft_samples),
        model=model_path,
        output_dir=training.directory,
        recipe=exp.recipe,
        milestones=tuple(exp.ft_samples),
        train_shots=tuple(exp.train_shots),
        data=exp.data,
        passthrough=tuple(passthrough) + tuple(extra),
    )


def plan_training(exp: Experiment, model_path: str, training: Training) -> list[str]:
    """Check a fine-tune's settings (iclvsft-train's own checks) and return its logging flags.

    Runs before any evaluation, so a bad --ft-samples fails in seconds, not hours.
    """
    from iclvsft_train import launch
    from iclvsft_train.run_state import RunStatus, TrainingRun

    folder = TrainingRun.load(training.directory)
    if folder.status is RunStatus.COMPLETE:
        return []
    if folder.can_resume:
        return _logging_flags(folder)
    if training.directory.exists() and folder.status not in (RunStatus.PREPARED, RunStatus.ABSENT):
        import shutil

        shutil.rmtree(training.directory)  # interrupted before its first checkpoint: start over
    launch.prepare(_train_options(exp, model_path, training))
    return _logging_flags(TrainingRun.load(training.directory))


def _logging_flags(folder: TrainingRun) -> list[str]:
    """TRL logging at every milestone step, so that it records the token count at each milestone."""
    steps = folder.logging_steps
    return ["--logging_steps", str(steps)] if steps else []


def ensure_trained(exp: Experiment, model_path: str, training: Training, logging: list[str]) -> TrainingRun:
    """The finished fine-tune: trained now, resumed, or found complete."""
    from iclvsft_train import launch
    from iclvsft_train.run_state import RunStatus, TrainingRun

    folder = TrainingRun.load(training.directory)
    if folder.status is not RunStatus.COMPLETE:
        options = _train_options(exp, model_path, training, logging)
        options.resume = folder.can_resume
        code = launch.run(options)
        if code != 0:
            raise IclvsftError(
                f"fine-tuning {training.name} failed (trl sft exit status {code}); rerun the same command to resume it"
            )
    return TrainingRun.load(training.directory)


def _run_in_process(
    run: RunContext,
    todo: list[Cell],
    trainings: list[Training],
    logging_flags: dict[str, list[str]],
    new_bar: Callable[[], Any],
    records: dict[str, dict[str, Any]],
) -> None:
    """``jobs`` 1: every cell in this process, ICL first, then each fine-tune and its milestones."""
    exp, model_path = run.exp, run.model_path
    runner = CellRunner(run)
    icl_todo = [c for c in todo if c.condition == "icl"]
    lm = load_lm(exp, model_path) if icl_todo else None  # a model that fails to load fails before any bar
    bar = new_bar()

    def finish(cell: Cell, lm: Any, extra: dict[str, Any]) -> None:
        records[run.key_of(cell)] = runner.evaluate(cell, lm, extra)
        bar.update(1)

    try:
        for cell in icl_todo:
            bar.set_postfix_str(icl_label(cell))
            finish(cell, lm, {"train_tokens": 0})
        del lm
        for training in trainings:
            ft_todo = [c for c in todo if c.training == training]
            if not ft_todo:
                continue
            bar.set_postfix_str(f"training {training.name}")
            trained = ensure_trained(exp, model_path, training, logging_flags.get(training.name, []))
            for samples in exp.ft_samples:
                milestone_cells = [c for c in ft_todo if c.ft_samples == samples]
                if not milestone_cells:
                    continue
                lm, extra = milestone_lm(exp, model_path, trained, samples)
                for cell in milestone_cells:
                    bar.set_postfix_str(ft_label(cell))
                    finish(cell, lm, extra)
                del lm
    finally:
        bar.close()  # ends the bar's line, so an error message starts on its own


def run_compare(
    exp: Experiment, command: Sequence[str] = (), make_bar: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole comparison; returns the run's metadata (paths, choices, timing).

    ``make_bar`` builds the one progress bar over all cells (tqdm's signature; default tqdm).
    """
    from iclvsft.compare.circuit_section import run_circuit_analyses
    from iclvsft.compare.jobs import default_jobs, run_parallel
    from iclvsft.compare.markdown import write_report
    from iclvsft.compare.records import Settings
    from iclvsft.compare.results import write_results
    from iclvsft.compare.summary import summary_table
    from iclvsft.models import model_label, resolve_model

    started = time.perf_counter()
    model_path = resolve_model(exp.model)  # one float32 cache; lm-eval and TRL cast to exp.dtype on load
    load_config(model_path)  # a missing or unreadable model fails here, before out exists
    out = ensure_output_dir(exp.out)
    label = model_label(exp.model)
    model_id = {"label": label, "path": model_path}
    split_fps = {t: fingerprints(exp.data.split_spec(t)) for t in exp.tasks}
    context = {
        "model": model_id,
        "seed": exp.data.seed,
        "fewshot_seed": exp.fewshot_seed,
        "dtype": exp.dtype,
        "backend": exp.eval_backend,
        "eval_args": exp.eval_args,
    }
    run = RunContext(exp, out, model_path, label, context, split_fps)
    trainings = _trainings(exp, model_id, out)

    cells = [
        Cell("icl", t, s, k, 0, draw=d)
        for t in exp.tasks
        for k in exp.shots
        for d in exp.draws_for(k)
        for s in HELD_OUT_SPLITS
    ]
    for training in trainings:
        cells += [
            Cell("ft", t, s, 0, n, training) for t in training.tasks for n in exp.ft_samples for s in HELD_OUT_SPLITS
        ]

    store = CellStore(out)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for cell in cells:
        found = store.get(run.key_of(cell))
        if found is not None:
            records[run.key_of(cell)] = found
        else:
            todo.append(cell)
    logging_flags = (
        {t.name: plan_training(exp, model_path, t) for t in trainings} if any(c.condition == "ft" for c in todo) else {}
    )
    jobs = exp.jobs or default_jobs(_device(exp))
    from tqdm.auto import tqdm

    def new_bar() -> Any:
        return (make_bar or tqdm)(
            total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell", file=sys.stderr
        )

    if jobs > 1 and todo:
        threads = run_parallel(run, todo, trainings, logging_flags, jobs, new_bar, records)
    else:
        threads = pin_cpu_threads(_device(exp))  # 2 busy cores ran 6-30x slower with 2 threads than 1
        _run_in_process(run, todo, trainings, logging_flags, new_bar, records)
    current = sorted(records.values(), key=lambda r: r["key"])
    meta = {
        "model": label,
        "model_path": model_path,
        "tasks": exp.tasks,
        "seed": exp.data.seed,
        "fewshot_seed": exp.fewshot_seed,
        "demos": exp.demos,
        "draws": exp.draws,
        "split_sizes": exp.data.sizes,
        "split_fingerprints": split_fps,
        "shots": exp.shots,
        "ft_samples": exp.ft_samples,
        "recipe": exp.recipe,
        "ft_mode": exp.ft_mode,
        "dtype": exp.dtype,
        "eval_backend": exp.eval_backend,
        "device": _device(exp),
        "torch_threads": threads,
        "jobs": jobs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(command),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "fine_tunes": {t.name: str(t.directory) for t in trainings},
    }
    write_results(current, out)
    settings = Settings.aggregate(current)
    circuit_lines, circuits = run_circuit_analyses(exp, settings, out, label) if exp.circuits else ([], None)
    write_report(settings, out, meta, circuit_section=circuit_lines)  # draws plots/<task>.png too
    if circuits is not None:  # for run.json only: report.md has them as its section, not in its metadata list
        meta["circuits"] = circuits
        meta["wall_time_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "run.json", json.dumps({"experiment": exp.to_dict(), **meta}, indent=2, default=str) + "\n")
    meta["summary"] = summary_table(settings)
    return meta
