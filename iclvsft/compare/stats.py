"""Interval estimates and paired tests for exact-match accuracies, in pure Python.

No scipy: the comparison must run wherever the package runs, and both quantities have short exact
formulas. The tests cross-check them against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The two-sided 95% normal quantile, Phi^-1(0.975).
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n`` (95% by default).

    Wilson rather than the normal approximation: it stays inside [0, 1] and keeps its coverage at
    0/n and n/n, which small evaluation splits hit often.
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp rounding noise: at 0/n the lower bound is exactly 0, at n/n the upper bound exactly 1.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class McNemarResult:
    """Paired comparison of two systems A and B on the same items.

    ``b01``: items A got right and B got wrong; ``b10``: the reverse; ``n``: paired items.
    ``p_value``: exact two-sided McNemar (binomial test of b01 against Binomial(b01 + b10, 1/2)).
    """

    b01: int
    b10: int
    p_value: float
    n: int
    #: The test behind ``p_value``: exact McNemar, or its generalization to per-item mean scores.
    method: str = "exact McNemar"
    #: Mean of A's score minus B's over the items (None: (b01 - b10) / n, as for 0/1 outcomes).
    mean_difference: float | None = None

    @property
    def direction(self) -> int:
        """+1 when A is ahead, -1 when B is, 0 on a tie."""
        diff = self.mean_difference if self.mean_difference is not None else self.b01 - self.b10
        return (diff > 1e-12) - (diff < -1e-12)

    @property
    def discordant(self) -> int:
        return self.b01 + self.b10


def mcnemar_exact_p(b01: int, b10: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts.

    Binomial(m, 1/2) is symmetric, so the two-sided p-value (the mass of outcomes no more likely than
    the observed one) is twice the smaller tail, capped at 1. Integer arithmetic keeps it exact for
    any m: Python's int / int division is correctly rounded even when 2**m overflows a float.
    """
    if b01 < 0 or b10 < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b01}, {b10}")
    m = b01 + b10
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b01, b10) + 1))
    return min(1.0, (2 * tail) / (1 << m))


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test of A against B; the two sequences score the same items in the same order."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired test needs the same items: {len(a_correct)} vs {len(b_correct)} outcomes")
    b01 = b10 = 0
    for a, b in zip(a_correct, b_correct):
        a, b = bool(a), bool(b)
        if a and not b:
            b01 += 1
        elif b and not a:
            b10 += 1
    return McNemarResult(b01=b01, b10=b10, p_value=mcnemar_exact_p(b01, b10), n=len(a_correct))


def paired_sign_flip(a_scores: Sequence[float], b_scores: Sequence[float], resolution: int = 1) -> McNemarResult:
    """Exact paired sign-flip (permutation) test of A against B on per-item scores in [0, 1].

    A score is a mean over ``resolution`` repeats (e.g. the fraction of R demonstration draws that
    answered an item correctly), so ``resolution * (a - b)`` is an integer d in [-R, R]. Under the
    null hypothesis each item's difference is as likely to have either sign; the two-sided p-value is
    the probability that the sum of randomly signed |d| is at least as far from 0 as the observed
    one, computed exactly by convolving the per-magnitude binomials (integer arithmetic). With one
    repeat d is -1, 0 or 1 and this *is* the exact McNemar test. ``b01``/``b10`` count the items
    where A / B scored higher.
    """
    if len(a_scores) != len(b_scores):
        raise ValueError(f"paired test needs the same items: {len(a_scores)} vs {len(b_scores)} scores")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    diffs = []
    for a, b in zip(a_scores, b_scores):
        d = (float(a) - float(b)) * resolution
        if abs(d - round(d)) > 1e-6 or not -resolution <= round(d) <= resolution:
            raise ValueError(f"scores must be multiples of 1/{resolution} in [0, 1], got {a} and {b}")
        diffs.append(round(d))
    b01 = sum(d > 0 for d in diffs)
    b10 = sum(d < 0 for d in diffs)
    observed = abs(sum(diffs))
    # Distribution of sum(sign_i * |d_i|) as {value: count}; total count 2**(nonzero items).
    counts: dict[int, int] = {0: 1}
    for magnitude in range(1, resolution + 1):
        c = sum(abs(d) == magnitude for d in diffs)
        if not c:
            continue
        step = {magnitude * (2 * j - c): math.comb(c, j) for j in range(c + 1)}
        merged: dict[int, int] = {}
        for value, count in counts.items():
            for delta, ways in step.items():
                merged[value + delta] = merged.get(value + delta, 0) + count * ways
        counts = merged
    total = sum(counts.values())
    extreme = sum(count for value, count in counts.items() if abs(value) >= observed)
    method = "exact McNemar" if resolution == 1 else f"exact paired sign-flip test (mean of {resolution} draws)"
    return McNemarResult(
        b01=b01,
        b10=b10,
        p_value=min(1.0, extreme / total),
        n=len(diffs),
        method=method,
        mean_difference=sum(diffs) / resolution / len(diffs) if diffs else 0.0,
    )
