"""Reading an answer out of a model's continuation, and exact match against the gold.

The answer is the task's answer pattern at the very start of the continuation (after spaces), so
``" 5"`` reads as 5, ``" 10"`` never counts for gold ``1`` and ``" I think 5"`` is invalid: no
substring containment, unlike the authors' scorer. Words are compared case-insensitively through
the task's canonical spelling (``true`` -> ``True``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from iclvsft_tasks.tasks.registry import get_task

#: What an unreadable continuation extracts to; it never equals a gold answer.
INVALID = "[invalid]"


@functools.cache
def _answer_at_start(task_name: str) -> re.Pattern[str]:
    return re.compile(r"[ \t]*(" + get_task(task_name).answer_regex + ")")


def extract_answer(task_name: str, continuation: str) -> str:
    """The canonical answer at the start of ``continuation``, or ``INVALID``."""
    match = _answer_at_start(task_name).match(continuation)
    return get_task(task_name).canonical_answer(match.group(1)) if match else INVALID


def is_correct(task_name: str, continuation: str, gold: str) -> bool:
    return extract_answer(task_name, continuation) == gold


def extract_answers(resps: Sequence[Sequence[str]], docs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """lm-eval ``custom`` filter: every response of every document -> its extracted answer."""
    return [[extract_answer(doc["task"], r) for r in responses] for responses, doc in zip(resps, docs)]
