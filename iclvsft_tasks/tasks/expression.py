"""expression_pattern: ``(S)+(Z)*(C)=`` where Z sums to zero, so the answer is the value of S.

Pattern-broken items have Z != 0 (and C != 0), so the gold S + Z*C differs from the shortcut S.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import INTEGER_ANSWER, Draft, PatternTask, TaskConfig

_SIGNED_INT = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class ExpressionConfig(TaskConfig):
    simple_terms: tuple[int, int] = (1, 2)  # terms in S
    simple_value: tuple[int, int] = (0, 10)  # value of S (= the pattern answer)
    zero_terms: tuple[int, int] = (2, 4)  # terms in Z
    zero_range: int = 20  # Z's free terms are drawn from [-r, r]
    complex_terms: int = 4  # terms in C
    complex_range: int = 10  # C's free terms are drawn from [-r, r]
    complex_value: tuple[int, int] = (-10, 10)  # value of C

    def validate(self) -> None:
        self.check_range("simple_terms", self.simple_terms, 1, 6)
        self.check_range("simple_value", self.simple_value, -1000, 1000)
        self.check_range("zero_terms", self.zero_terms, 2, 8)
        self.check_range("complex_value", self.complex_value, -1000, 1000)
        for name in ("zero_range", "complex_range"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise IclvsftError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.complex_terms, int) or not 2 <= self.complex_terms <= 8:
            raise IclvsftError(f"complex_terms must be an integer in [2, 8], got {self.complex_terms!r}")
        if self.complex_value == (0, 0):
            raise IclvsftError("complex_value must allow a non-zero value, or no broken item exists")


def _render_sum(terms: list[int]) -> str:
    """``[9, -4]`` -> ``9-4``: no spaces, no leading ``+``."""
    return "".join(str(t) if i == 0 or t < 0 else f"+{t}" for i, t in enumerate(terms))


def _sum_to(rng: random.Random, n_terms: int, target: int, low: int, high: int) -> list[int]:
    """n terms: n-1 drawn from [low, high], the last one makes the sum equal to ``target``."""
    terms = [rng.randint(low, high) for _ in range(n_terms - 1)]
    return terms + [target - sum(terms)]


def _value(expression: str) -> int:
    """Value of a flat sum like ``-10-8+4+8``, read term by term (no eval)."""
    if not re.fullmatch(r"[+-]?\d+([+-]\d+)*", expression):
        raise ValueError(f"not a flat integer sum: {expression!r}")
    return sum(int(term) for term in _SIGNED_INT.findall(expression))


class ExpressionPattern(PatternTask):
    name = "expression_pattern"
    description = "Calculate the value of each expression. Answer with the integer only."
    cue = ""  # the question's own trailing "=" asks for the answer
    answer_regex = INTEGER_ANSWER
    max_answer_tokens = 8
    config_class = ExpressionConfig
    config: ExpressionConfig

    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        cfg = self.config
        s_value = rng.randint(*cfg.simple_value)
        simple = _sum_to(rng, rng.randint(*cfg.simple_terms), s_value, 0, max(cfg.simple_value[1], 0))
        c_value = rng.randint(*cfg.complex_value)
        while not pattern and c_value == 0:  # Z*C must not vanish on a broken item
            c_value = rng.randint(*cfg.complex_value)
        complex_ = _sum_to(rng, cfg.complex_terms, c_value, -cfg.complex_range, cfg.complex_range)
        n_zero = rng.randint(*cfg.zero_terms)
        if pattern:
            zero = _sum_to(rng, n_zero, 0, -cfg.zero_range, cfg.zero_range)
        else:
            zero = [rng.randint(-cfg.zero_range, cfg.zero_range) for _ in range(n_zero)]
            while sum(zero) == 0:
                zero[-1] = rng.randint(-cfg.zero_range, cfg.zero_range)
        meta = {"simple": _render_sum(simple), "zero": _render_sum(zero), "complex": _render_sum(complex_)}
        question = f"({meta['simple']})+({meta['zero']})*({meta['complex']})="
        gold = s_value + sum(zero) * c_value
        return Draft(question, str(gold), str(s_value), meta)

    def solve(self, meta: dict[str, Any]) -> str:
        return str(_value(meta["simple"]) + _value(meta["zero"]) * _value(meta["complex"]))

    def shortcut(self, meta: dict[str, Any]) -> str:
        return str(_value(meta["simple"]))
