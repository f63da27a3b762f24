"""The experiment of ``iclvsft compare``: one validated dataclass, from a YAML file and flags."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from iclvsft_tasks.atomic import check_creatable
from iclvsft_tasks.cliutil import check_device, parse_int_list
from iclvsft_tasks.data.spec import SPLITS, DataSpec
from iclvsft_tasks.demos import DEFAULT_DRAWS, DEMO_MODES
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.lm_eval_glue import BACKEND_NAME
from iclvsft_tasks.tasks.registry import parse_task_list
from iclvsft_train.checkpoints import DTYPES_OR_AUTO
from iclvsft_train.launch import check_launch_engines, check_recipe, load_yaml_mapping

#: Shipped experiments (``--config demo`` works as well as a path).
EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
#: lm-eval model backends: ours (hf + shared-prefix KV reuse), lm-eval's hf, lm-eval's vllm.
BACKENDS = (BACKEND_NAME, "hf", "vllm")
FT_MODES = ("per-task", "mixture")


@dataclasses.dataclass
class Experiment:
    """Everything that defines one comparison (the flags of ``iclvsft compare``)."""

    #: One model, or several (a list, or comma-separated): every model gets the same cells, items and
    #: demonstration draws, and fine-tunes of its own.
    model: str | list[str] = "default"
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["expression_pattern", "parity_pattern"])
    shots: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 4, 8, 16])
    ft_samples: list[int] = dataclasses.field(default_factory=lambda: [100, 400, 1600])
    #: One iclvsft-train recipe, or several: each model is fine-tuned with each, and the validation
    #: split chooses n* and the recipe together.
    recipe: str | list[str] = "lora"
    ft_mode: str = "per-task"  # one fine-tune per task, or one on the mixture of all tasks
    train_shots: list[int] = dataclasses.field(default_factory=lambda: [0])
    test_size: int = 200
    test_broken_size: int | None = None  # default: test_size
    validation_size: int = 100
    train_size: int = 20_000
    seed: int = 0
    fewshot_seed: int = 1234  # lm-eval's few-shot sampler seed (its --seed default), per-item demos
    demos: str = "fixed"  # fixed: one demonstration set per draw for every item; per-item: lm-eval's
    draws: int | None = None  # fixed demonstration sets per k (default 3); per-item has one
    out: str = "runs/compare"
    dtype: str = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    batch_size: int = 1  # one CPU thread gains nothing from batching, and pads
    #: Worker processes for cells and fine-tunes (None: physical cores on CPU, 1 on GPU; see compare.jobs).
    #: How the work is spread, never what it computes: no cell key or training hash includes it.
    jobs: int | None = None
    eval_backend: str = BACKEND_NAME
    eval_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra model args, e.g. tensor_parallel_size
    train_args: list[str] = dataclasses.field(default_factory=list)  # extra iclvsft-train / trl sft / accelerate flags
    circuits: bool = False  # after the comparison, the circuit-shift analysis at k* and n* (iclvsft circuits)
    circuit_items: int = 50  # its clean/corrupt pairs per task
    #: The seed and split sizes above as one value, built and checked in __post_init__; the run uses this.
    data: DataSpec = dataclasses.field(init=False, repr=False)
    #: ``model`` and ``recipe`` as lists, checked in __post_init__; the run uses these.
    models: list[str] = dataclasses.field(init=False, repr=False)
    recipes: list[str] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        from iclvsft.models import model_label

        self.tasks = parse_task_list(",".join(self.tasks) if isinstance(self.tasks, list) else str(self.tasks))
        self.models = _name_list("model", self.model)
        labels = [model_label(m) for m in self.models]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise IclvsftError(f"model lists {', '.join(repeated)} more than once (aliases name the same model)")
        self.recipes = _name_list("recipe", self.recipe)
        self.shots = _int_list("shots", self.shots, minimum=0)
        self.ft_samples = _int_list("ft_samples", self.ft_samples, minimum=1, allow_empty=True)
        self.train_shots = _int_list("train_shots", self.train_shots, minimum=0)
        for recipe in self.recipes:
            check_recipe(recipe)  # a recipe name, never a path: it also names the fine-tune's folder
        if self.test_broken_size is None:
            self.test_broken_size = self.test_size
        self.data = DataSpec(
            seed=self.seed,
            test_size=self.test_size,
            test_broken_size=self.test_broken_size,
            validation_size=self.validation_size,
            train_size=self.train_size,
        )
        for split in SPLITS:  # a comparison evaluates and trains on every split, so none may be empty
            if self.data.size(split) < 1:
                raise IclvsftError(f"{split}_size must be at least 1, got {self.data.size(split)}")
        for name in ("fewshot_seed", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise IclvsftError(f"{name} must be an integer, got {value!r}")
        if self.demos not in DEMO_MODES:
            raise IclvsftError(f"demos must be one of {', '.join(DEMO_MODES)}, got {self.demos!r}")
        if self.draws is None:
            self.draws = DEFAULT_DRAWS if self.demos == "fixed" else 1
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise IclvsftError(f"draws must be an integer >= 1, got {self.draws!r}")
        if self.demos == "per-item" and self.draws != 1:
            raise IclvsftError(
                "draws apply to fixed demonstrations (demos: fixed); per-item demonstrations "
                "are drawn afresh for every item"
            )
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise IclvsftError(f"jobs must be an integer >= 1, got {self.jobs!r}")
        if self.batch_size < 1:
            raise IclvsftError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.eval_backend not in BACKENDS:
            raise IclvsftError(f"eval_backend must be one of {', '.join(BACKENDS)}, got {self.eval_backend!r}")
        if self.ft_mode not in FT_MODES:
            raise IclvsftError(f"ft_mode must be one of {', '.join(FT_MODES)}, got {self.ft_mode!r}")
        if self.dtype not in DTYPES_OR_AUTO:
            raise IclvsftError(f"dtype must be one of {', '.join(DTYPES_OR_AUTO)}, got {self.dtype!r}")
        if not isinstance(self.eval_args, dict):
            raise IclvsftError("eval_args must be a mapping of model arguments")
        self.train_args = [str(a) for a in self.train_args]
        if not isinstance(self.circuits, bool):
            raise IclvsftError(f"circuits must be true or false, got {self.circuits!r}")
        if isinstance(self.circuit_items, bool) or not isinstance(self.circuit_items, int) or self.circuit_items < 1:
            raise IclvsftError(f"circuit_items must be an integer >= 1, got {self.circuit_items!r}")
        check_creatable(self.out, "out")  # before run_compare creates out or writes fine-tuning data
        # Demonstrations come from train; fine-tuning samples too (per task, or split over the mixture).
        if max(self.shots) > self.data.train_size:
            raise IclvsftError(
                f"{max(self.shots)} shots need at least that many train items; train_size is {self.data.train_size}"
            )
        per_task = max(self.ft_samples, default=0) / (len(self.tasks) if self.ft_mode == "mixture" else 1)
        if per_task > self.data.train_size:
            raise IclvsftError(
                f"{max(self.ft_samples)} fine-tuning samples exceed the train split "
                f"({self.data.train_size} items per task); raise train_size or lower ft_samples"
            )

    def check_machine(self) -> None:
        """What this machine must have to run the experiment (the device, vLLM, DeepSpeed): checked by
        run_compare before anything is written, not when the experiment loads, so a GPU experiment
        can be loaded, inspected and validated anywhere."""
        check_device(self.device)
        if self.eval_backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise IclvsftError(
                "eval_backend vllm needs vLLM, which is not installed: pip install vllm (on a GPU machine), "
                f"or use --eval-backend {BACKEND_NAME}"
            )
        check_launch_engines(self.train_args)

    def draws_for(self, shots: int) -> list[int]:
        """The draws an ICL setting is evaluated with: 1..R for fixed sets, else 0 (none to draw)."""
        return list(range(1, self.draws + 1)) if self.demos == "fixed" and shots > 0 else [0]

    def to_dict(self) -> dict[str, Any]:
        """The settings as given (flat seed and sizes, as in the YAML), for ``run.json``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("data", "models", "recipes")}


def _name_list(name: str, value: Any) -> list[str]:
    """A name or a list of names (a string may list several, comma-separated), in the order given."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise IclvsftError(f"{name} must be a name or a list of names, got {value!r}")
    names = [p.strip() for p in parts]
    if not names or not all(names):
        raise IclvsftError(f"{name} must not be empty, got {value!r}")
    if len(set(names)) != len(names):
        raise IclvsftError(f"{name} lists a name twice: {value!r}")
    return names


def _int_list(name: str, value: Any, minimum: int, allow_empty: bool = False) -> list[int]:
    if isinstance(value, str):
        parts = parse_int_list(value, name, allow_empty=True)
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    else:
        raise IclvsftError(f"{name} must be a list of integers, got {value!r}")
    try:
        numbers = sorted({int(p) for p in parts})
    except (TypeError, ValueError):
        raise IclvsftError(f"{name} must be integers, got {value!r}") from None
    if not numbers and not allow_empty:
        raise IclvsftError(f"{name} is empty")
    if any(n < minimum for n in numbers):
        raise IclvsftError(f"{name} must be integers >= {minimum}, got {numbers}")
    return numbers


def experiment_path(name_or_path: str) -> Path:
    """A shipped experiment name (``demo``) or a YAML path."""
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
        raise IclvsftError(f"experiment config {name_or_path} not found (a YAML path, or one of: {names})")
    return path


def load_experiment(config: str | None, overrides: dict[str, Any]) -> Experiment:
    """Defaults <- the YAML file <- explicit flags (those not None)."""
    values: dict[str, Any] = {}
    if config:
        loaded = load_yaml_mapping(experiment_path(config), "experiment config", "experiment settings")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(Experiment) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise IclvsftError(f"unknown experiment setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return Experiment(**values)
    except TypeError as exc:
        raise IclvsftError(f"bad experiment settings: {exc}") from None
