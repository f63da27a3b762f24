"""The one prompt formatter, shared by the lm-eval tasks and the fine-tuning data.

lm-eval lays out a plain-text few-shot prompt as

    description + (query + TARGET_DELIMITER + target + FEWSHOT_DELIMITER) * k + query

and scores the model's continuation against ``target``. The lm-eval YAMLs take ``description``
and ``query`` from fields that ``lm_eval_doc`` puts on every document, and their delimiters from
the constants below (the YAMLs are generated from this module), so ``render_prompt`` here is
byte-identical to what lm-eval shows the model; the tests hold that against lm-eval itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from iclvsft_tasks.tasks.registry import get_task

#: Between the task description and the first demonstration (or the query at 0 shots).
DESCRIPTION_SEPARATOR = "\n\n"
#: Between a query and its answer: the answer the model writes starts with this space.
TARGET_DELIMITER = " "
#: Between one demonstration and the next.
FEWSHOT_DELIMITER = "\n\n"
#: lm-eval stops generating at this string; no answer contains it.
STOP_SEQUENCE = "\n"


def description(task_name: str) -> str:
    """The task's one-line instruction, with the separator that follows it."""
    return get_task(task_name).description + DESCRIPTION_SEPARATOR


def query(item: Mapping[str, Any]) -> str:
    """The question followed by the task's answer cue (no trailing whitespace)."""
    cue = get_task(item["task"]).cue
    return f"{item['question']}\n{cue}" if cue else item["question"]


def target(item: Mapping[str, Any]) -> str:
    """The answer exactly as the model should write it after ``TARGET_DELIMITER``."""
    return item["answer"]


def render_prompt(item: Mapping[str, Any], demos: Iterable[Mapping[str, Any]] = ()) -> str:
    """The full plain-text prompt for ``item`` with the given demonstrations (lm-eval's layout)."""
    shots = "".join(query(d) + TARGET_DELIMITER + target(d) + FEWSHOT_DELIMITER for d in demos)
    return description(item["task"]) + shots + query(item)


def render_completion(item: Mapping[str, Any]) -> str:
    """What should follow ``render_prompt``: the delimiter and the answer (a trainer adds EOS)."""
    return TARGET_DELIMITER + target(item)


def lm_eval_doc(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item plus the prompt fields the lm-eval YAMLs read (``description``, ``query``)."""
    return {**item, "description": description(item["task"]), "query": query(item)}
