"""boolean_pattern: a True/False expression whose trailing ``and False`` / ``or True`` decides it.

Pattern items end in a top-level ``and False`` (gold False) or ``or True`` (gold True), so the last
literal is the answer. Broken items end in ``and True`` / ``or False``, which leave the value of the
rest unchanged, and that value is chosen to differ from the last literal. The surface form is the
same for both: ``(BODY) and X`` or ``BODY or X``, so only reading the literal tells them apart.
The authors' code had this suffix switched off everywhere; here it is always on.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

from iclvsft_tasks.tasks.base import Draft, PatternTask, TaskConfig

_TOKEN = re.compile(r"\(|\)|True|False|and|or")


@dataclasses.dataclass(frozen=True)
class BooleanConfig(TaskConfig):
    groups: tuple[int, int] = (2, 4)  # parenthesised groups in the body
    literals_per_group: tuple[int, int] = (2, 4)

    def validate(self) -> None:
        self.check_range("groups", self.groups, 2, 8)
        self.check_range("literals_per_group", self.literals_per_group, 1, 8)


def _chain(rng: random.Random, n: int) -> tuple[list[str], list[bool], list[str]]:
    values = [rng.random() < 0.5 for _ in range(n)]
    ops = [rng.choice(("and", "or")) for _ in range(n - 1)]
    return [str(v) for v in values], values, ops


def _value(values: list[bool], ops: list[str]) -> bool:
    """Python precedence on a flat chain: ``and`` binds tighter than ``or``."""
    disjuncts, current = [], values[0]
    for op, value in zip(ops, values[1:]):
        if op == "and":
            current = current and value
        else:
            disjuncts.append(current)
            current = value
    disjuncts.append(current)
    return any(disjuncts)


def _render(words: list[str], ops: list[str]) -> str:
    parts = [words[0]]
    for op, word in zip(ops, words[1:]):
        parts += [op, word]
    return " ".join(parts)


class _Parser:
    """Recursive descent over ``or`` / ``and`` / parentheses / literals (no eval)."""

    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(text)
        if "".join(self.tokens) != text.replace(" ", ""):
            raise ValueError(f"not a Boolean expression over True/False/and/or: {text!r}")
        self.pos = 0

    def parse(self) -> bool:
        value = self._or()
        if self.pos != len(self.tokens):
            raise ValueError(f"trailing tokens in {' '.join(self.tokens)!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ValueError("unexpected end of expression")
        self.pos += 1
        return token

    def _or(self) -> bool:
        value = self._and()
        while self._peek() == "or":
            self._take()
            right = self._and()  # no short-circuit: every token must be consumed
            value = value or right
        return value

    def _and(self) -> bool:
        value = self._atom()
        while self._peek() == "and":
            self._take()
            right = self._atom()
            value = value and right
        return value

    def _atom(self) -> bool:
        token = self._take()
        if token == "(":
            value = self._or()
            if self._take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        if token in ("True", "False"):
            return token == "True"
        raise ValueError(f"unexpected token {token!r}")


def evaluate(expression: str) -> bool:
    """Value of a Boolean expression with Python's precedence, by parsing (never eval)."""
    return _Parser(expression).parse()


class BooleanPattern(PatternTask):
    name = "boolean_pattern"
    description = "Evaluate each Boolean expression using Python's operator precedence. Answer True or False."
    cue = "Answer:"
    choices = ("False", "True")
    max_answer_tokens = 4
    config_class = BooleanConfig
    config: BooleanConfig

    def _body(self, rng: random.Random) -> tuple[list[str], list[bool], list[str]]:
        groups, values = [], []
        for _ in range(rng.randint(*self.config.groups)):
            words, literal_values, ops = _chain(rng, rng.randint(*self.config.literals_per_group))
            groups.append(f"({_render(words, ops)})")
            values.append(_value(literal_values, ops))
        return groups, values, [rng.choice(("and", "or")) for _ in range(len(groups) - 1)]

    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        joiner = rng.choice(("and", "or"))
        # Pattern: "and False" / "or True" decide. Broken: "and True" / "or False" keep the body's
        # value, which must then differ from the last literal.
        last = (joiner == "or") if pattern else (joiner == "and")
        while True:
            groups, group_values, ops = self._body(rng)
            body_value = _value(group_values, ops)
            if pattern or body_value != last:
                break
        body = _render(groups, ops)
        expression = f"({body}) and {last}" if joiner == "and" else f"{body} or {last}"
        gold = (body_value and last) if joiner == "and" else (body_value or last)
        return Draft(expression, str(gold), str(last), {"expression": expression})

    def solve(self, meta: dict[str, Any]) -> str:
        return str(evaluate(meta["expression"]))

    def shortcut(self, meta: dict[str, Any]) -> str:
        return meta["expression"].rsplit(" ", 1)[-1]
