"""iclvsft: implicit-pattern tasks for studying when in-context learning beats fine-tuning.

Public API::

    from iclvsft_tasks import TASKS, get_task, DataSpec, SplitSpec, build_splits, fingerprints
    from iclvsft_tasks import render_prompt, render_completion, extract_answer
    from iclvsft_tasks import tasks_dir, task_manager      # lm-eval glue
"""

from iclvsft_tasks.data.spec import DataSpec
from iclvsft_tasks.data.splits import SPLITS, SplitSpec, build_split, build_splits, fingerprint, fingerprints
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.prompts import render_completion, render_prompt
from iclvsft_tasks.scoring import extract_answer, is_correct
from iclvsft_tasks.tasks.registry import TASKS, get_task, task_names

__version__ = "0.1.0"

__all__ = [
    "SPLITS",
    "TASKS",
    "DataSpec",
    "IclvsftError",
    "SplitSpec",
    "build_split",
    "build_splits",
    "extract_answer",
    "fingerprint",
    "fingerprints",
    "get_task",
    "is_correct",
    "render_completion",
    "render_prompt",
    "task_manager",
    "task_names",
    "tasks_dir",
]


def __getattr__(name: str) -> object:
    # The lm-eval glue imports lm-eval; loading it on first use keeps `import iclvsft_tasks` (and so
    # `iclvsft-eval status`, which must explain a missing lm-eval in one line) working without it.
    if name in ("task_manager", "tasks_dir"):
        from iclvsft_tasks import lm_eval_glue

        return getattr(lm_eval_glue, name)
    raise AttributeError(f"module 'iclvsft_tasks' has no attribute {name!r}")
