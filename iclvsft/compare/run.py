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
import functools
import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclvsft.compare.config import Experiment
from iclvsft.compare.records import Settings, has_pattern_use, mark_pattern_use, pattern_use
from iclvsft_tasks.atomic import atomic_open, atomic_write_text, ensure_output_dir
from iclvsft_tasks.cliutil import machine_line, pin_cpu_threads, resolve_device, slow_half_precision_once, verbose
from iclvsft_tasks.data.spec import HELD_OUT_SPLITS
from iclvsft_tasks.data.splits import build_split, fingerprints
from iclvsft_tasks.demos import fixed_demo_ids
from iclvsft_tasks.errors import IclvsftError, one_line
from iclvsft_tasks.folder_lock import folder_lock
from iclvsft_tasks.lm_eval_configs import SHOTS, variant_name
from iclvsft_tasks.lm_eval_glue import BACKEND_NAME
from iclvsft_tasks.scoring import INVALID, extract_answer
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
    recipe: str = "lora"  # the iclvsft-train recipe (part of the hashed config)


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

    def identity(self) -> dict[str, Any]:
        """The fields a stored record repeats to say which cell it is."""
        return {
            "condition": self.condition,
            "task": self.task,
            "split": self.split,
            "shots": self.shots,
            "ft_samples": self.ft_samples,
            "draw": self.draw,
        }

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


def demo_settings(draw: int) -> dict[str, Any]:
    """The demonstration settings of a cell's lm-eval metadata (``task_manager`` keywords): draw
    ``draw`` of the fixed sets, or none (lm-eval's per-item default; 0 shots shows none)."""
    return {"demos": "fixed", "draw": draw} if draw else {}


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
        args.update({"lora_local_path": adapter, "max_lora_rank": max(16, _lora_rank(adapter))})
    return "vllm", {**args, **exp.eval_args}


def _lora_rank(adapter: str) -> int:
    """The adapter's LoRA rank; 16 when its config cannot be read here (a reproduce command written
    for a run folder without its ``ft/``: vLLM then reports the missing adapter itself)."""
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError, TypeError, AttributeError):
        return 16


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

    ``task_manager`` must carry the cell's demonstrations (``demos``/``draw`` metadata). Each
    prediction row also says whether its answer is the item's shortcut answer and whether it was
    unreadable, and the record counts both (``records.pattern_use``).
    """
    from lm_eval import simple_evaluate

    from iclvsft_tasks.lm_eval_glue import quiet_lm_eval_noise

    quiet_lm_eval_noise()  # no git "fatal:" line and no --metadata hint per cell
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
        verbosity="INFO" if verbose() else "ERROR",
    )
    wall = time.perf_counter() - start
    samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
    predictions = [
        mark_pattern_use(
            {
                "id": s["doc"]["id"],
                "answer": s["doc"]["answer"],
                "prediction": s["filtered_resps"][0],
                "raw": s["resps"][0][0],
                "correct": bool(s["exact_match"]),
            },
            s["doc"]["shortcut_answer"],
            INVALID,
        )
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
    low, high = _wilson(correct, len(predictions))
    record = {
        **cell.identity(),
        "demos": cell.demos,
        "n": len(predictions),
        "correct": correct,
        "accuracy": correct / max(len(predictions), 1),
        "ci_low": low,
        "ci_high": high,
        **pattern_use(predictions),
        "prompt_tokens": prompt_tokens,
        "wall_time_s": round(wall, 3),
        "lm_eval_task": name,
    }
    if cell.training is not None:
        record["recipe"] = cell.training.recipe
    if cell.draw:
        record["demo_ids"] = demo_ids
    return record, predictions


class CellStore:
    """Finished cells on disk: ``cells/<key>.json`` is written last, so its presence means done.

    A stored cell is used only after :meth:`verified` has checked it against the cell it claims to be
    and recomputed its accuracy from its predictions; one that does not hold is evaluated again.
    """

    def __init__(self, out: Path) -> None:
        self.out = out

    def record_path(self, key: str) -> Path:
        return self.out / CELLS_DIR / f"{key}.json"

    def predictions_rel(self, key: str) -> str:
        return f"{PREDICTIONS_DIR}/{key}.jsonl"

    def verified(
        self, key: str, cell: Cell, fingerprint: str, items: Sequence[dict[str, Any]], checkpoint: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The stored record of ``key`` if it holds, else None and why not (no reason: never stored).

        It holds when it is a record of this cell (key, condition, task, split, shots, samples, draw,
        the split ``fingerprint``), its predictions file has one row per item of ``items`` in order with
        the gold answers, each row's extracted answer and correctness recomputed from its raw
        continuation agree, and its ``n``, ``correct``, ``accuracy`` and Wilson bounds are those of the rows.
        ``checkpoint``: an FT cell's milestone, relative to the run folder (an older record's absolute
        path to the same milestone is rewritten to it).
        """
        path = self.record_path(key)
        if not path.exists():
            return None, None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({one_line(exc)})"
        if not isinstance(record, dict) or not record:
            return None, f"holds {type(record).__name__ if record else 'an empty object'}, not a cell record"
        expected = {
            "key": key,
            **cell.identity(),
            "fingerprint": fingerprint,
            "predictions": self.predictions_rel(key),
        }
        wrong = [field for field, value in expected.items() if record.get(field) != value]
        if wrong:
            return None, f"its {', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not match the cell"
        if checkpoint is not None:
            stored = Path(str(record.get("checkpoint", "")))
            if stored.parts[-len(Path(checkpoint).parts) :] != Path(checkpoint).parts:
                return None, "it names another checkpoint"
            record["checkpoint"] = checkpoint
        try:
            rows = [json.loads(line) for line in (self.out / record["predictions"]).read_text("utf-8").splitlines()]
        except FileNotFoundError:
            return None, "its predictions file is missing"
        except (OSError, ValueError) as exc:
            return None, f"its predictions file cannot be read ({one_line(exc)})"
        try:
            ids_ok = [(r["id"], r["answer"]) for r in rows] == [(i["id"], i["answer"]) for i in items]
            recomputed = [extract_answer(cell.task, r["raw"]) for r in rows]
            rows_ok = all(r["prediction"] == p and r["correct"] is (p == r["answer"]) for r, p in zip(rows, recomputed))
        except (KeyError, TypeError):
            return None, "its predictions file is truncated or not ours"
        if not ids_ok:
            return None, "its predictions file does not hold the split's items (truncated or edited)"
        if not rows_ok:
            return None, "its predictions do not match their raw continuations"
        correct = sum(r["correct"] for r in rows)
        low, high = _wilson(correct, len(rows))
        derived = {"n": len(rows), "correct": correct, "accuracy": correct / max(len(rows), 1), "ci_low": low}
        derived["ci_high"] = high
        for field, value in derived.items():
            stored = record.get(field)
            if not isinstance(stored, (int, float)) or isinstance(stored, bool) or abs(stored - value) > 1e-9:
                return None, f"its {field} {stored!r} is not that of its predictions ({value:.6g})"
        return record, None

    def put(self, key: str, record: dict[str, Any], predictions: list[dict]) -> dict[str, Any]:
        rel = self.predictions_rel(key)
        with atomic_open(self.out / rel) as handle:
            for row in predictions:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        record = {**record, "key": key, "predictions": rel}
        atomic_write_text(self.record_path(key), json.dumps(record, indent=1, sort_keys=True) + "\n")
        return record


def _wilson(correct: int, n: int) -> tuple[float, float]:
    from iclvsft.compare.stats import wilson_interval

    return wilson_interval(correct, n)


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

    def stored(self, cell: Cell) -> tuple[dict[str, Any] | None, str | None]:
        """The cell's stored record if it verifies (:meth:`CellStore.verified`), else None and why not."""
        items = build_split(self.exp.data.split_spec(cell.task), cell.split)
        checkpoint = milestone_rel(cell) if cell.training else None
        return CellStore(self.out).verified(
            self.key_of(cell), cell, self.split_fps[cell.task][cell.split], items, checkpoint
        )


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
            self._managers[cell.draw] = task_manager(data=self.run.exp.data, **demo_settings(cell.draw))
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


def milestone_rel(cell: Cell) -> str:
    """An FT cell's milestone folder relative to the run folder (records never store absolute paths,
    so a copied run folder reads its own checkpoints)."""
    from iclvsft_train.run_state import MILESTONES_DIR

    return f"{FT_DIR}/{cell.training.name}/{MILESTONES_DIR}/samples-{cell.ft_samples}"


def milestone_lm(exp: Experiment, model_path: str, trained: TrainingRun, samples: int) -> tuple[Any, dict[str, Any]]:
    """The model of a finished fine-tune's milestone, and the fields its cells' records add."""
    milestone = trained.milestone(samples)
    path = str(milestone.path)
    lm = load_lm(exp, model_path, adapter=path) if milestone.adapter else load_lm(exp, path)
    rel = milestone.path.relative_to(trained.directory.parent.parent).as_posix()  # <out>/ft/<name>/...
    return lm, {"train_tokens": milestone.training_tokens(), "checkpoint": rel}


def cell_label(cell: Cell) -> str:
    """A cell in words, for messages."""
    return icl_label(cell) if cell.condition == "icl" else ft_label(cell)


def icl_label(cell: Cell) -> str:
    """The bar's note for an ICL cell."""
    return f"ICL {cell.task} k={cell.shots}{f' draw {cell.draw}' if cell.draw else ''} {cell.split}"


def ft_label(cell: Cell) -> str:
    """The bar's note for an FT cell."""
    return f"FT {cell.task} n={cell.ft_samples} {cell.split}"


def _trainings(exp: Experiment, model_id: dict[str, Any], out: Path) -> list[Training]:
    """The fine-tunes of one model: per recipe, one per task (or one on the mixture)."""
    if not exp.ft_samples:
        return []
    groups = [tuple(exp.tasks)] if exp.ft_mode == "mixture" else [(t,) for t in exp.tasks]
    trainings = []
    for recipe in exp.recipes:
        for tasks in groups:
            config = {
                "model": model_id,
                "tasks": tasks,
                "seed": exp.data.seed,
                "sizes": exp.data.sizes,
                "recipe": recipe,
                "train_shots": exp.train_shots,
                "samples": max(exp.ft_samples),
                "milestones": exp.ft_samples,
                "train_args": exp.train_args,
                "dtype": exp.dtype,
            }
            config_hash = _hash(config)
            name = ("mixture" if len(tasks) > 1 else tasks[0]) + f"-{recipe}-{config_hash}"
            trainings.append(Training(name, tasks, out / FT_DIR / name, config_hash, recipe))
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
        recipe=training.recipe,
        milestones=tuple(exp.ft_samples),
        train_shots=tuple(exp.train_shots),
        data=exp.data,
        passthrough=tuple(passthrough) + tuple(extra),
    )


def plan_training(exp: Experiment, model_path: str, training: Training) -> list[str]:
    """Check a fine-tune's settings (iclvsft-train's own checks) and return its logging flags.

    Runs before any evaluation, so a bad --ft-samples fails in seconds, not hours.
    """
    from iclvsft_train import launch, runlock
    from iclvsft_train.data import DataOptions, split_fingerprints
    from iclvsft_train.run_state import RunStatus, TrainingRun

    options = _train_options(exp, model_path, training)
    folder = TrainingRun.load(training.directory)
    data = DataOptions.create(options.task, options.samples, options.data, options.train_shots)
    stale = folder.status is not RunStatus.ABSENT and folder.manifest.get("split_fingerprints") != split_fingerprints(
        data
    )
    if not stale and folder.status is RunStatus.COMPLETE:
        return []
    if not stale and folder.can_resume:
        return _logging_flags(folder)
    with runlock.hold(training.directory) as lock:  # never a folder that a live trainer (a killed run's) writes
        folder = TrainingRun.load(training.directory)
        if stale or not folder.only_prepared:
            # The folder is this run's own (named by the fine-tune's settings), so what cannot be resumed
            # starts over: interrupted before its first checkpoint, an unreadable manifest.json, or data
            # from a changed generator (its FT cells have new keys: the old model must not serve them).
            unreadable = folder.status is RunStatus.ABSENT and any(
                p.name != runlock.LOCK_FILE for p in training.directory.iterdir()
            )
            if stale or unreadable:
                why = "was trained on other data" if stale else "has an unreadable manifest.json"
                print(f"iclvsft compare: fine-tune {training.name} {why}; training it again", file=sys.stderr)
            runlock.clear(lock)
        launch.prepare(options)
    return _logging_flags(TrainingRun.load(training.directory))


def _logging_flags(folder: TrainingRun) -> list[str]:
    """TRL logging at every milestone step, so that its log has the loss and token count at each milestone."""
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
    after_training: Callable[[Training], Any] | None = None,
) -> None:
    """``jobs`` 1: every cell in this process, ICL first, then each fine-tune and its milestones
    (``after_training`` is called as each fine-tune's cells are in)."""
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
                if after_training:  # stored by an earlier run, which may have stopped before this
                    after_training(training)
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
            if after_training:
                bar.set_postfix_str(f"after {training.name}")
                after_training(training)
    finally:
        bar.close()  # ends the bar's line, so an error message starts on its own


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """One model's part of a comparison: its context, its fine-tunes and its cells."""

    run: RunContext
    trainings: list[Training]
    cells: list[Cell]


def plan_model(
    exp: Experiment, out: Path, model: str, model_path: str, split_fps: dict[str, dict[str, str]]
) -> ModelRun:
    """List the cells of ``model`` (resolved to ``model_path``): the same tasks, splits, k, draws and
    milestones for every model.

    A cell's key holds the model (a built-in by its weights' hash, else label and path) but not the
    other models of the run, so a run of one model keeps its keys when others are added, a model's
    cells are shared by every run that includes it, and a copied folder keeps its cells on a machine
    whose model cache lies elsewhere.
    """
    from iclvsft.models import model_identity

    model_id = model_identity(model, model_path)  # built-ins by their weights' hash, not the cache's place
    label = model_id["label"]
    context = {
        "model": model_id,
        "seed": exp.data.seed,
        "fewshot_seed": exp.fewshot_seed,
        "dtype": exp.dtype,
        "backend": exp.eval_backend,
        "eval_args": exp.eval_args,
    }
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
    return ModelRun(RunContext(exp, out, model_path, label, context, split_fps), trainings, cells)


def _parameters(model_path: str) -> int | None:
    """A model's parameter count from its config (built on the meta device: no weights read), or None."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # a size is only a plot's axis: an unreadable config places the model by order
        return None


def _circuits_if_ready(plan: ModelRun, records: dict[str, dict[str, Any]], training: Training) -> bool:
    """The circuit analysis of ``training``'s tasks, once every cell of them (``plan``'s model, every
    recipe, ICL too: k* and n* are chosen over all of them) is in ``records``; False while some are not."""
    from iclvsft.compare.circuit_section import analyse_task_if_ready
    from iclvsft.compare.records import Settings

    run = plan.run
    mine = {c: records.get(run.key_of(c)) for c in plan.cells if c.task in training.tasks}
    if any(r is None for r in mine.values()):
        return False
    for task in training.tasks:
        settings = Settings.aggregate([r for c, r in mine.items() if c.task == task])
        analyse_task_if_ready(run.exp, settings, run.out, run.label, task, model=run.exp.models[0])
    return True


def _restore_for_circuits(plan: ModelRun, settings: Settings) -> None:
    """Train again each fine-tune of ``plan`` whose n* milestone a circuit analysis still to run needs
    and that is not on disk (the run resumed on a machine whose ``ft/`` is gone before the analysis was
    stored): the same data, seed and settings give the milestone whose cells are stored, which its
    training-token count checks."""
    from iclvsft.compare.circuit_section import missing_checkpoint

    run = plan.run
    exp = run.exp
    for task in exp.tasks:
        ft = missing_checkpoint(exp, settings, run.out, run.label, task, model=exp.models[0])
        if ft is None:
            continue
        rel = Path(str(ft["checkpoint"]))  # ft/<training>/milestones/samples-<n>
        training = next((t for t in plan.trainings if t.name in rel.parts), None)
        if training is None:
            continue  # a record of another configuration: the section says the milestone is missing
        samples = int(ft["ft_samples"])
        print(
            f"iclvsft compare: the circuit analysis of {task} needs FT n*={samples} ({rel}), which is not on disk; "
            f"training {training.name} again (same data and seed)",
            file=sys.stderr,
        )
        trained = ensure_trained(exp, run.model_path, training, plan_training(exp, run.model_path, training))
        tokens = trained.milestone(samples).training_tokens()
        if tokens != ft.get("train_tokens"):
            raise IclvsftError(
                f"fine-tune {training.name} trained again saw {tokens} training tokens at n={samples}, "
                f"its stored cells {ft.get('train_tokens')}: it is not the model they measured; "
                f"delete {run.out / FT_DIR / training.name} and its FT cells to start it over"
            )


def run_compare(
    exp: Experiment, command: Sequence[str] = (), make_bar: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole comparison; returns the run's metadata (paths, choices, timing).

    With several models, each model's cells run in turn (ICL, then its fine-tunes), on the same
    items and demonstration draws; one report covers them all. ``make_bar`` builds the progress bar
    over each model's cells (tqdm's signature; default tqdm).
    """
    from iclvsft.models import resolve_model

    started = time.perf_counter()
    exp.check_machine()
    slow = slow_half_precision_once(exp.dtype, _device(exp))
    if slow:
        print(f"iclvsft compare: warning: {slow}", file=sys.stderr)
    model_paths = {}
    for model in exp.models:  # every model resolves (and converts) first
        model_paths[model] = resolve_model(model)  # one float32 cache; lm-eval and TRL cast to exp.dtype on load
        load_config(model_paths[model])  # a missing or unreadable model fails here, before out exists
    out = ensure_output_dir(exp.out)
    with folder_lock(out, "iclvsft compare run"):  # one run per folder: two would evaluate every cell twice
        return _compare_locked(exp, out, model_paths, started, command, make_bar)


def _compare_locked(
    exp: Experiment,
    out: Path,
    model_paths: dict[str, str],
    started: float,
    command: Sequence[str],
    make_bar: Callable[..., Any] | None,
) -> dict[str, Any]:
    """``run_compare`` while holding ``out``'s lock."""
    from tqdm.auto import tqdm

    from iclvsft.compare.circuit_section import run_circuit_analyses
    from iclvsft.compare.jobs import default_jobs, run_parallel
    from iclvsft.compare.markdown import write_report
    from iclvsft.compare.records import Settings
    from iclvsft.compare.reproduce import reproduce_command
    from iclvsft.compare.results import write_results
    from iclvsft.compare.summary import summary_table

    split_fps = {t: fingerprints(exp.data.split_spec(t)) for t in exp.tasks}
    plans = [plan_model(exp, out, model, path, split_fps) for model, path in model_paths.items()]
    jobs = exp.jobs or default_jobs(_device(exp))
    records: dict[str, dict[str, Any]] = {}
    threads = None
    for plan in plans:
        run, trainings, cells = plan.run, plan.trainings, plan.cells
        model_path = run.model_path
        todo = []
        rejected = []
        for cell in cells:
            found, problem = run.stored(cell)
            if found is not None and not has_pattern_use(found):
                found, problem = None, None  # older records lack pattern use: evaluated again, silently
            if found is not None:
                records[run.key_of(cell)] = found
            else:
                todo.append(cell)
                if problem:
                    rejected.append(f"  {CELLS_DIR}/{run.key_of(cell)}.json ({cell_label(cell)}): {problem}")
        if rejected:
            print(
                f"iclvsft compare: {len(rejected)} stored cell(s) did not verify and are evaluated again:\n"
                + "\n".join(rejected),
                file=sys.stderr,
            )
        # Only fine-tunes with cells left are checked and prepared (one with an unreadable manifest is retrained).
        logging_flags = {
            t.name: plan_training(exp, model_path, t) for t in trainings if any(c.training == t for c in todo)
        }

        def new_bar(cells: list[Cell] = cells, todo: list[Cell] = todo, label: str = run.label) -> Any:
            desc = f"cells {label}" if len(plans) > 1 else "cells"
            return (make_bar or tqdm)(
                total=len(cells), initial=len(cells) - len(todo), desc=desc, unit="cell", file=sys.stderr
            )

        # The circuit analysis of the first model's tasks runs as their fine-tunes finish, while the
        # checkpoints are on disk; the run's end reuses it (and analyses what this could not).
        hook = functools.partial(_circuits_if_ready, plan, records) if exp.circuits and plan is plans[0] else None
        if jobs > 1 and todo:
            threads = run_parallel(run, todo, trainings, logging_flags, jobs, new_bar, records, hook)
        else:
            threads = pin_cpu_threads(_device(exp))  # 2 busy cores ran 6-30x slower with 2 threads than 1
            _run_in_process(run, todo, trainings, logging_flags, new_bar, records, hook)
    current = sorted(records.values(), key=lambda r: r["key"])
    labels = [p.run.label for p in plans]
    several = len(plans) > 1
    meta = {
        "model": labels if several else labels[0],
        "model_path": {p.run.label: p.run.model_path for p in plans} if several else plans[0].run.model_path,
        "tasks": exp.tasks,
        "seed": exp.data.seed,
        "fewshot_seed": exp.fewshot_seed,
        "demos": exp.demos,
        "draws": exp.draws,
        "split_sizes": exp.data.sizes,
        "split_fingerprints": split_fps,
        "shots": exp.shots,
        "ft_samples": exp.ft_samples,
        "recipe": exp.recipes if len(exp.recipes) > 1 else exp.recipes[0],
        "ft_mode": exp.ft_mode,
        "dtype": exp.dtype,
        "eval_backend": exp.eval_backend,
        "device": _device(exp),
        "torch_threads": threads,
        "jobs": jobs,
        "machine": f"{machine_line()}, Python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(command),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "fine_tunes": {t.name: t.directory.relative_to(out).as_posix() for p in plans for t in p.trainings},  # in --out
    }
    if several:  # the x axis of the figure across models
        meta["model_parameters"] = {p.run.label: _parameters(p.run.model_path) for p in plans}
    # Each cell's iclvsft-eval command, derived from its record now (never stored in it: stored cells stay valid).
    paths, device = {p.run.label: p.run.model_path for p in plans}, _device(exp)
    write_results([{**r, "reproduce": reproduce_command(exp, r, paths[r["model"]], device)} for r in current], out)
    settings = Settings.aggregate(current)
    if exp.circuits:
        _restore_for_circuits(plans[0], settings)
    # The circuit-shift analysis runs on the first model (the study's default model).
    circuit_lines, circuits = (
        run_circuit_analyses(exp, settings, out, labels[0], model=exp.models[0]) if exp.circuits else ([], None)
    )
    write_report(settings, out, meta, circuit_section=circuit_lines)  # draws plots/<task>.png too
    if circuits is not None:  # for run.json only: report.md has them as its section, not in its metadata list
        meta["circuits"] = circuits
        meta["wall_time_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "run.json", json.dumps({"experiment": exp.to_dict(), **meta}, indent=2, default=str) + "\n")
    meta["summary"] = summary_table(settings)
    return meta
