"""The one list of tasks: name -> task class. Everything else looks tasks up here."""

from __future__ import annotations

import functools
from typing import Any

from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import PatternTask
from iclvsft_tasks.tasks.boolean import BooleanPattern
from iclvsft_tasks.tasks.code import CodePattern
from iclvsft_tasks.tasks.expression import ExpressionPattern
from iclvsft_tasks.tasks.parity import ParityPattern
from iclvsft_tasks.tasks.relation import RelationPattern

TASKS: dict[str, type[PatternTask]] = {
    cls.name: cls for cls in (ExpressionPattern, CodePattern, BooleanPattern, RelationPattern, ParityPattern)
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str, **config: Any) -> PatternTask:
    """The named task; keyword arguments override its generator settings."""
    if not config:
        return _default_task(name)
    return type(_default_task(name))(_default_task(name).config.replace(**config))


@functools.cache
def _default_task(name: str) -> PatternTask:
    try:
        cls = TASKS[name]
    except (KeyError, TypeError):
        raise IclvsftError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    return cls()


def parse_task_list(spec: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, each checked against the registry (``all`` = every task)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if names == ["all"]:
        return task_names()
    if not names:
        raise IclvsftError("no task given")
    for name in names:
        get_task(name)
    return names
