"""iclvsft: implicit-pattern tasks for studying when in-context learning beats fine-tuning.

Public API::

    from iclvsft_tasks import TASKS, get_task, SplitSpec, build_splits, fingerprints
    from iclvsft_tasks import render_prompt, render_completion, extract_answer
    from iclvsft_tasks import tasks_dir, task_manager      # lm-eval glue
"""

from .errors import IclvsftError
from .lm_eval_glue import task_manager, tasks_dir
from .prompts import render_completion, render_prompt
from .registry import TASKS, get_task, task_names
from .scoring import extract_answer, is_correct
from .splits import SPLITS, SplitSpec, build_split, build_splits, fingerprint, fingerprints

__version__ = "0.1.0"

__all__ = [
    "SPLITS",
    "TASKS",
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
