"""Importance maps, the circuit shift between two maps, bootstrap CIs over pairs, rank correlation.

* **Importance map** of a condition: the mean |score| of each component over the pairs,
  normalized to sum 1, separately for heads and for MLPs.
* **Shift** of a condition from the base (0-shot base model) map, per component type:
  ``l1`` = sum |map - base map| (0: the same map; 2: disjoint support) and
  ``jaccard`` = 1 - |top_k(map) & top_k(base)| / |top_k(map) | top_k(base)|, where top_k holds the
  ``k = max(1, ceil(top_fraction * components))`` components of largest importance
  (default 10%: 8 of Gemma 3 270M's 72 heads, 2 of its 18 MLPs; ties go to the lower index).
* **Bootstrap**: pairs resampled with replacement (the same resample for every condition, since all
  conditions score the same items), the shift recomputed each time; percentile CIs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from iclvsft_tasks.errors import IclvsftError

MEASURES = ("l1", "jaccard")
DEFAULT_TOP_FRACTION = 0.1
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95


def importance_map(scores: np.ndarray) -> np.ndarray:
    """``scores`` [pairs, ...] -> mean |score| over pairs, normalized to sum 1 (all zero stays zero)."""
    scores = np.asarray(scores, dtype=float)
    mean = np.abs(scores).mean(axis=0)
    total = mean.sum()
    return mean / total if total > 0 else mean


def top_k(n_components: int, top_fraction: float = DEFAULT_TOP_FRACTION) -> int:
    """How many components the Jaccard overlap compares: ceil(fraction * n), at least 1."""
    if not 0 < top_fraction <= 1:
        raise IclvsftError(f"top fraction must be in (0, 1], got {top_fraction}")
    return max(1, min(n_components, math.ceil(top_fraction * n_components - 1e-9)))


def _top_masks(maps: np.ndarray, k: int) -> np.ndarray:
    """Boolean masks [rows, components] of each row's k largest entries (ties: lower index)."""
    order = np.argsort(-maps, axis=1, kind="stable")[:, :k]
    mask = np.zeros(maps.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def _shifts(base: np.ndarray, other: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Row-wise shifts between two stacks of flattened maps [rows, components]."""
    l1 = np.abs(other - base).sum(axis=1)
    a, b = _top_masks(base, k), _top_masks(other, k)
    jaccard = 1.0 - (a & b).sum(axis=1) / (a | b).sum(axis=1)
    return {"l1": l1, "jaccard": jaccard}


def shift(base_map: np.ndarray, other_map: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION) -> dict[str, float]:
    """``{"l1": ..., "jaccard": ...}``: how far ``other_map`` lies from ``base_map`` (same shape)."""
    base = np.asarray(base_map, dtype=float).reshape(1, -1)
    other = np.asarray(other_map, dtype=float).reshape(1, -1)
    if base.shape != other.shape:
        raise IclvsftError(f"maps of different shapes: {np.shape(base_map)} and {np.shape(other_map)}")
    k = top_k(base.shape[1], top_fraction)
    return {name: float(values[0]) for name, values in _shifts(base, other, k).items()}


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2
    return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]


def bootstrap_shift(
    scores: Mapping[str, np.ndarray],
    base: str = "base",
    compare: tuple[str, str] = ("icl", "ft"),
    top_fraction: float = DEFAULT_TOP_FRACTION,
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Shift of every condition from ``base`` with bootstrap CIs, and of ``compare[0] - compare[1]``.

    ``scores``: condition -> per-pair scores [pairs, ...] of one component type, the same pairs in
    the same order for every condition. Returns ``{"top_k", "conditions": {c: {measure: {"value",
    "ci"}}}, "difference": {measure: {"value", "ci", "verdict"}} | None}``.
    """
    if base not in scores:
        raise IclvsftError(f"no {base!r} condition to measure shifts from")
    arrays = {c: np.abs(np.asarray(s, dtype=float)).reshape(len(s), -1) for c, s in scores.items()}
    n, width = arrays[base].shape
    if n < 1 or any(a.shape != (n, width) for a in arrays.values()):
        raise IclvsftError("every condition needs scores of the same pairs and components")
    k = top_k(width, top_fraction)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(max(1, resamples), n))

    def maps(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
        mean = a[rows].mean(axis=-2)
        total = mean.sum(axis=-1, keepdims=True)
        return np.divide(mean, total, out=np.zeros_like(mean), where=total > 0)

    full = {c: maps(a, np.arange(n)[None, :]) for c, a in arrays.items()}
    boot = {c: maps(a, index) for c, a in arrays.items()}
    out: dict[str, Any] = {
        "top_k": k,
        "components": width,
        "pairs": n,
        "resamples": int(index.shape[0]),
        "level": level,
        "conditions": {},
        "difference": None,
    }
    point, samples = {}, {}
    for c in arrays:
        if c == base:
            continue
        point[c] = {m: float(v[0]) for m, v in _shifts(full[base], full[c], k).items()}
        samples[c] = _shifts(boot[base], boot[c], k)
        out["conditions"][c] = {m: {"value": point[c][m], "ci": _interval(samples[c][m], level)} for m in MEASURES}
    first, second = compare
    if first in point and second in point:
        out["difference"] = {}
        for m in MEASURES:
            ci = _interval(samples[first][m] - samples[second][m], level)
            out["difference"][m] = {"value": point[first][m] - point[second][m], "ci": ci, "verdict": verdict(ci)}
    return out


def verdict(ci: list[float]) -> str:
    """What a CI of shift(ICL) - shift(FT) says."""
    low, high = ci
    if low > 0:
        return "ICL's shift exceeds FT's"
    if high < 0:
        return "FT's shift exceeds ICL's"
    return "no clear difference (the CI includes 0)"


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Any, b: Any) -> float | None:
    """Spearman's rank correlation of two equally long sequences (None when undefined)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise IclvsftError(f"spearman needs equally long inputs, got {a.size} and {b.size}")
    if a.size < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
