"""parity_pattern: is the sum of the numbers even or odd?

Pattern items hold only odd numbers, so the parity of the sum is the parity of their count.
Broken items mix in an odd number of even numbers, which makes count parity and sum parity differ.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import Draft, PatternTask, TaskConfig


@dataclasses.dataclass(frozen=True)
class ParityConfig(TaskConfig):
    count: tuple[int, int] = (3, 12)  # how many numbers
    value: tuple[int, int] = (10, 999)  # multi-digit numbers

    def validate(self) -> None:
        self.check_range("count", self.count, 2, 64)
        self.check_range("value", self.value, 0)
        if self.value[1] - self.value[0] < 2:
            raise IclvsftError(f"value must span both odd and even numbers, got {self.value}")


def _parity(n: int) -> str:
    return "even" if n % 2 == 0 else "odd"


class ParityPattern(PatternTask):
    name = "parity_pattern"
    description = "Decide whether the sum of the numbers is even or odd. Answer even or odd."
    cue = "Answer:"
    choices = ("even", "odd")
    max_answer_tokens = 4
    config_class = ParityConfig
    config: ParityConfig

    def _number(self, rng: random.Random, odd: bool) -> int:
        lo, hi = self.config.value
        n = rng.randint(lo, hi)
        if (n % 2 == 1) != odd:
            n = n + 1 if n < hi else n - 1
        return n

    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        count = rng.randint(*self.config.count)
        # Broken items: an odd number of evens (1, 3, ...) flips sum parity against count parity.
        n_even = 0 if pattern else rng.randrange(1, count + 1, 2)
        evens = set(rng.sample(range(count), n_even))
        numbers = [self._number(rng, odd=i not in evens) for i in range(count)]
        question = "Numbers: " + " ".join(map(str, numbers))
        return Draft(question, _parity(sum(numbers)), _parity(count), {"numbers": numbers})

    def solve(self, meta: dict[str, Any]) -> str:
        return _parity(sum(meta["numbers"]))

    def shortcut(self, meta: dict[str, Any]) -> str:
        return _parity(len(meta["numbers"]))
