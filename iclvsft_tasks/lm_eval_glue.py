"""What lm-evaluation-harness calls: the dataset builder behind every YAML, and the task index.

Every task YAML says ``custom_dataset: !function iclvsft_tasks.lm_eval_glue.load_splits`` with
``dataset_kwargs: {iclvsft_task: <name>}``. lm-eval calls it with that plus its metadata, which
holds the YAML's ``metadata``, every ``--model_args`` entry and every ``--metadata`` entry. Our
settings there carry the ``iclvsft_`` prefix (``iclvsft_seed=1``, ``iclvsft_test_size=100``) so
they cannot clash with a model's own ``seed``; any other key is not ours and is ignored.
``iclvsft_demos`` (``per-item`` | ``fixed``) and ``iclvsft_draw`` choose the demonstrations
(see ``demos.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclvsft_tasks.cliutil import verbose
from iclvsft_tasks.data.spec import METADATA_KEYS, METADATA_PREFIX, DataSpec, metadata_int
from iclvsft_tasks.data.splits import SplitSpec, build_splits
from iclvsft_tasks.demos import DEFAULT_DEMOS, DRAW_FIELD, check_draw, check_mode, demo_order
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.prompts import lm_eval_doc

if TYPE_CHECKING:
    import datasets
    from lm_eval.tasks import TaskManager

PREFIX = METADATA_PREFIX
#: ``--metadata`` keys that choose the demonstrations (the data keys are ``spec.METADATA_KEYS``).
DEMO_KEYS: dict[str, str] = {f"{PREFIX}demos": "demos", f"{PREFIX}draw": "draw"}
_DATASET_KEY = f"{PREFIX}task"


#: Our lm-eval model backend (``backend.hflm.IclvsftHFLM``), registered under this one name.
BACKEND_NAME = "iclvsft-hf"


def register_backend() -> None:
    """Make ``--model iclvsft-hf`` known to lm-eval as a lazy registry entry: torch and the model
    code load only when it is used. (lm-eval 0.4.13 discovers no plugin models, so ``iclvsft-eval``
    and ``compare`` call this; in your own Python, ``import iclvsft_tasks.backend.hflm`` does it.)"""
    import lm_eval.models  # noqa: F401 - lm-eval's own models first: its registry fills itself only when empty
    from lm_eval.api.registry import model_registry

    if BACKEND_NAME not in model_registry:
        model_registry.register(BACKEND_NAME, target="iclvsft_tasks.backend.hflm:IclvsftHFLM")


def _not_the_metadata_hint(record: logging.LogRecord) -> bool:
    """False for lm-eval's "Custom kwargs can be passed to `--metadata`" warning (said for every task built
    by a custom_dataset, so for all of ours), unless ``-v``: our ``--metadata`` keys are in the help."""
    return verbose() or "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def _git_hash_quietly() -> str | None:
    """lm-eval's ``get_git_commit_hash`` (same value) without git's ``fatal: not a git repository`` line,
    which lm-eval lets through to stderr once per evaluation outside a git checkout; shown with ``-v``."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        stderr = None if verbose() else subprocess.DEVNULL
        return subprocess.check_output(["git", "describe", "--always"], stderr=stderr).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


def quiet_lm_eval_noise() -> None:
    """Drop the two lines lm-eval prints for every task or evaluation that tell a user nothing (see
    above), so ``iclvsft-eval`` and each ``compare`` cell stay quiet; idempotent, undone by ``-v``."""
    import lm_eval.evaluator

    task_logger = logging.getLogger("lm_eval.api.task")
    if _not_the_metadata_hint not in task_logger.filters:
        task_logger.addFilter(_not_the_metadata_hint)
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly


def tasks_dir() -> str:
    """The directory of our lm-eval YAMLs (the installed ``task_configs``)."""
    spec = importlib.util.find_spec("iclvsft_tasks.task_configs")
    if spec is None or not spec.submodule_search_locations:
        raise IclvsftError("the iclvsft task configs are not installed; reinstall the iclvsft package")
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


def data_from_metadata(metadata: dict[str, Any]) -> DataSpec:
    """The DataSpec that lm-eval metadata asks for (unprefixed keys are someone else's)."""
    known = {*METADATA_KEYS, *DEMO_KEYS, _DATASET_KEY}
    unknown = sorted(k for k in metadata if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise IclvsftError(
            f"unknown iclvsft metadata {', '.join(unknown)}; known: {', '.join([*METADATA_KEYS, *DEMO_KEYS])}"
        )
    return DataSpec.from_metadata(metadata)


def demos_from_metadata(metadata: dict[str, Any]) -> tuple[str, int]:
    """(mode, draw) from lm-eval metadata; a draw without ``iclvsft_demos: fixed`` is an error."""
    mode = check_mode(str(metadata.get(f"{PREFIX}demos", DEFAULT_DEMOS)))
    draw_key = f"{PREFIX}draw"
    if draw_key not in metadata:
        return mode, 1
    draw = check_draw(metadata_int(draw_key, metadata[draw_key]), draw_key)
    if mode != "fixed":
        raise IclvsftError(f"{draw_key} needs {PREFIX}demos=fixed (per-item demonstrations have no draws)")
    return mode, draw


def load_splits(**kwargs: Any) -> datasets.DatasetDict:
    """lm-eval's ``custom_dataset``: every split of one task, as lm-eval documents."""
    try:
        task = kwargs.pop(_DATASET_KEY)
    except KeyError:
        raise IclvsftError(f"the task YAML must set dataset_kwargs.{_DATASET_KEY}") from None
    mode, draw = demos_from_metadata(kwargs)
    return dataset_dict(data_from_metadata(kwargs).split_spec(task), draw if mode == "fixed" else None)


@functools.lru_cache(maxsize=32)
def dataset_dict(spec: SplitSpec, fixed_draw: int | None = None) -> datasets.DatasetDict:
    """Splits as a ``datasets.DatasetDict``, cached so a group of variants builds each task once.

    With ``fixed_draw``, ``train`` comes in that draw's order and marked with its number, which
    makes ``demos.DemoSampler`` show its first k items to every query.
    """
    import datasets

    splits = {}
    for split, items in build_splits(spec).items():
        if not items:
            continue  # lm-eval reads the first document of a split; leave empty ones out
        docs = [lm_eval_doc(item) for item in items]
        if split == "train" and fixed_draw is not None:
            docs = [{**docs[i], DRAW_FIELD: fixed_draw} for i in demo_order(spec, fixed_draw)]
        splits[split] = datasets.Dataset.from_list(docs)
    return datasets.DatasetDict(splits)


def metadata_for(data: DataSpec | None = None, **settings: int | str | None) -> dict[str, int | str]:
    """Prefixed lm-eval metadata, e.g. ``metadata_for(seed=1, test_size=100, demos="fixed", draw=2)``
    or ``metadata_for(DataSpec(...), demos="fixed")``; a setting that is None keeps its default."""
    known = [k.removeprefix(PREFIX) for k in [*METADATA_KEYS, *DEMO_KEYS]]
    unknown = [key for key in settings if key not in known]
    if unknown:
        raise IclvsftError(f"unknown setting {unknown[0]!r}; known: {', '.join(known)}")
    given = {f"{PREFIX}{key}": value for key, value in settings.items() if value is not None}
    data_keys = [key for key in given if key in METADATA_KEYS]
    if data is not None and data_keys:
        raise IclvsftError("give the seed and split sizes as data= or as settings, not both")
    metadata: dict[str, int | str] = {}
    if data is not None:
        metadata.update(data.to_metadata())
    elif data_keys:  # only the settings given: the others keep what lm-eval's metadata says
        checked = DataSpec.from_metadata({key: given[key] for key in data_keys}).to_metadata()
        metadata.update({key: checked[key] for key in data_keys})
    if f"{PREFIX}demos" in given:
        metadata[f"{PREFIX}demos"] = check_mode(str(given[f"{PREFIX}demos"]))
    if f"{PREFIX}draw" in given:
        metadata[f"{PREFIX}draw"] = metadata_int(f"{PREFIX}draw", given[f"{PREFIX}draw"])
    demos_from_metadata(metadata)  # a draw without fixed demonstrations fails here, not in lm-eval
    return metadata


def task_manager(
    *,
    include_defaults: bool = False,
    include_path: str | list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    data: DataSpec | None = None,
    **settings: int | str | None,
) -> TaskManager:
    """An lm-eval TaskManager that knows our tasks, for ``lm_eval.simple_evaluate``.

    ``settings`` are ``seed``, the split sizes (``test_size``, ``test_broken_size``,
    ``validation_size``, ``train_size``) and the demonstrations (``demos``, ``draw``); ``data``
    gives the seed and sizes as one ``DataSpec`` instead.
    ``include_defaults=False`` skips indexing lm-eval's ~15k built-in tasks (about 7 s).
    """
    from lm_eval.tasks import TaskManager

    register_backend()  # so that simple_evaluate(model="iclvsft-hf", ...) works alongside our tasks
    extra = [include_path] if isinstance(include_path, str) else list(include_path or [])
    return TaskManager(
        include_path=[tasks_dir(), *extra],
        include_defaults=include_defaults,
        metadata={**(metadata or {}), **metadata_for(data, **settings)},
    )
