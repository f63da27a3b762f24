"""The interface every pattern task implements.

A task is a small module with
  * a frozen config dataclass whose ``validate()`` explains bad values in one line,
  * ``generate(rng, pattern)``: draws one item from a ``random.Random`` (pattern item when
    ``pattern`` is true, pattern-broken item otherwise) and knows its gold by construction,
  * ``solve(meta)``: an independent solver that recomputes the gold from the item's structure,
  * ``shortcut(meta)``: what the implicit shortcut answers for the same structure.

Tests hold the three together: gold == solve(meta), shortcut_answer == shortcut(meta), and
``pattern`` is exactly "the shortcut gives the gold".
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

from iclvsft_tasks.errors import IclvsftError


class Draft(NamedTuple):
    """One generated item before the split machinery adds its id, task and split."""

    question: str
    answer: str
    shortcut_answer: str
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Base of the per-task generator settings. Subclasses add fields and checks."""

    def validate(self) -> None:
        """Raise IclvsftError if a value cannot work. Subclasses extend it."""

    @staticmethod
    def check_range(name: str, bounds: tuple[int, int], low: int, high: int | None = None) -> None:
        lo, hi = bounds
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo > hi:
            raise IclvsftError(f"{name} must be an integer range (min, max) with min <= max, got {bounds}")
        if lo < low or (high is not None and hi > high):
            limit = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise IclvsftError(f"{name} must lie within {limit}, got {bounds}")

    def replace(self, **changes: Any) -> TaskConfig:
        """A validated copy with some fields changed."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise IclvsftError(
                f"unknown setting(s) {', '.join(unknown)} for {type(self).__name__}; known: {', '.join(sorted(fields))}"
            )
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new


_WHITESPACE = re.compile(r"\s+")

#: An integer answer: "5" in " 5", " 5." or " 5, ..."; never the "5" of "5.5" or "5x".
INTEGER_ANSWER = r"-?\d+(?!\.\d|\w)"


def normalize_question(question: str) -> str:
    """The form two questions are compared in: whitespace runs collapsed, ends stripped."""
    return _WHITESPACE.sub(" ", question).strip()


def question_id(question: str) -> str:
    """Stable id of a question: a hash of its normalized text (identical in every process)."""
    return hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()[:16]


class PatternTask(ABC):
    """A generator of pattern / pattern-broken items for one task."""

    name: ClassVar[str]
    #: One line that says what to do and how to answer (the lm-eval ``description``).
    description: ClassVar[str]
    #: Text after the question that asks for the answer ("" when the question ends in its own cue).
    cue: ClassVar[str]
    #: Regex (matched at the start of the model's continuation) that reads one answer; tasks with
    #: ``choices`` get one built from them.
    answer_regex: ClassVar[str]
    #: For tasks with a closed answer set: the canonical choices (enables multiple-choice variants).
    choices: ClassVar[tuple[str, ...] | None] = None
    #: Generation budget for the answer, in tokens (digits may be one token each).
    max_answer_tokens: ClassVar[int] = 8
    #: The dataclass holding this task's generator settings.
    config_class: ClassVar[type[TaskConfig]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.choices and "answer_regex" not in cls.__dict__:
            cls.answer_regex = "(?i:" + "|".join(map(re.escape, cls.choices)) + r")\b"

    def __init__(self, config: TaskConfig | None = None) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config

    @abstractmethod
    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        """Draw one item; ``pattern=False`` draws an item on which the shortcut is wrong."""

    @abstractmethod
    def solve(self, meta: dict[str, Any]) -> str:
        """The gold answer recomputed from the structure in ``meta`` (never from the shortcut)."""

    @abstractmethod
    def shortcut(self, meta: dict[str, Any]) -> str:
        """The answer the implicit shortcut gives for the structure in ``meta``."""

    def canonical_answer(self, text: str) -> str:
        """Spelling of an extracted answer that compares equal to the gold (case of words)."""
        if self.choices:
            for choice in self.choices:
                if choice.lower() == text.lower():
                    return choice
        return text
