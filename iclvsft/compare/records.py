"""The comparison's cell records: their order, the aggregate over demonstration draws, the choice of k* and n*.

A *record* is one evaluated cell (condition, model, task, split, shots or fine-tuning samples, draw)
as a plain dict; see ``iclvsft compare``. The choice of k (shots) and n (fine-tuning samples) is
made on the ``validation`` split only, and ``test`` / ``test_broken`` are then read for that one
choice: picking the best test cell would report the maximum of noisy estimates, biased upwards.

With fixed demonstration sets, every ICL setting has R cells (draws 1..R). Everything after the
results files works on their aggregate, a :class:`Settings` (:func:`aggregate_draws`, computed once
per report): the mean accuracy over draws, the item CI (the mean of the draws' Wilson bounds: the
uncertainty from the choice of test items) and the between-draw spread (the uncertainty from the
choice of demonstrations).

Besides accuracy, every record measures *pattern use* (:func:`pattern_use`): the share of answers
equal to the item's ``shortcut_answer`` (the shortcut rate) and of answers that could not be read
(the invalid rate). On ``test_broken`` the shortcut answer is wrong, so accuracy there cannot tell
whether a side picked up the implicit pattern; the shortcut rate can.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iclvsft.compare.stats import wilson_interval
from iclvsft_tasks.data.spec import HELD_OUT_SPLITS

Record = dict[str, Any]

#: The split that chooses k* and n*.
SELECTION_SPLIT = HELD_OUT_SPLITS[0]
#: The splits the verdict is stated on: items where the shortcut works, and where it fails.
VERDICT_SPLITS = HELD_OUT_SPLITS[1:]
CONDITION_NAMES = {"icl": "ICL", "ft": "FT"}
#: The split whose shortcut rate measures pattern use: the shortcut's answer is wrong there.
PATTERN_SPLIT = HELD_OUT_SPLITS[-1]
#: Per-item flags of a predictions row that pattern use counts (besides ``correct``).
PATTERN_FLAGS = ("shortcut", "invalid")
#: A record's figure: its rate field and 95% interval fields (``accuracy`` counts ``correct``).
METRICS = {
    "accuracy": ("accuracy", "ci_low", "ci_high"),
    "shortcut": ("shortcut_rate", "shortcut_ci_low", "shortcut_ci_high"),
    "invalid": ("invalid_rate", "invalid_ci_low", "invalid_ci_high"),
}


def split_rank(split: str) -> tuple[int, str]:
    """Sort key of a split: the held-out splits in reading order, then any other by name."""
    return (HELD_OUT_SPLITS.index(split), "") if split in HELD_OUT_SPLITS else (len(HELD_OUT_SPLITS), split)


def _sort_key(rec: Mapping[str, Any]) -> tuple:
    # key and seed last so that the order is total even for duplicate configurations.
    return (
        str(rec.get("model", "")),
        str(rec.get("task", "")),
        str(rec.get("condition", "")),
        str(rec.get("recipe") or ""),
        split_rank(str(rec.get("split", ""))),
        int(rec.get("shots", 0)),
        int(rec.get("ft_samples", 0)),
        int(rec.get("draw", 0)),
        int(rec.get("seed", 0)),
        str(rec.get("key", "")),
    )


def sort_records(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """Records in the canonical order: model, task, condition, recipe, split, shots, ft_samples, draw."""
    return [dict(r) for r in sorted(records, key=_sort_key)]


def ordered(values: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """The distinct values: those in ``preferred`` first, in its order, then the others sorted."""
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def knob(rec: Mapping[str, Any]) -> int:
    """The knob of a cell: k for ICL, n for FT."""
    return int(rec["shots"]) if rec.get("condition") == "icl" else int(rec["ft_samples"])


def ci(rec: Mapping[str, Any], metric: str = "accuracy") -> tuple[float, float]:
    """The record's item CI of ``metric``: its stored bounds, else the Wilson interval of the count over n."""
    _, low, high = METRICS[metric]
    if rec.get(low) is not None and rec.get(high) is not None:
        return float(rec[low]), float(rec[high])
    return wilson_interval(int(rec["correct" if metric == "accuracy" else metric]), int(rec["n"]))


def has_pattern_use(rec: Mapping[str, Any]) -> bool:
    """Whether the record measures pattern use (records written before it did not)."""
    return all(rec.get(f"{flag}_rate") is not None for flag in PATTERN_FLAGS)


def mark_pattern_use(row: dict[str, Any], shortcut_answer: str, invalid: str) -> dict[str, Any]:
    """Add a predictions row's pattern-use flags: ``shortcut`` (its answer is the shortcut's) and
    ``invalid`` (no answer could be read: the extracted ``prediction`` is the marker ``invalid``)."""
    row["shortcut_answer"] = shortcut_answer
    row["shortcut"] = row["prediction"] == shortcut_answer
    row["invalid"] = row["prediction"] == invalid
    return row


def pattern_use(rows: Sequence[Mapping[str, Any]]) -> Record:
    """A cell's pattern-use fields from its predictions rows: for ``shortcut`` and ``invalid``, the
    count, the rate and its 95% Wilson interval (``shortcut_rate``, ``shortcut_ci_low``, ...)."""
    fields: Record = {}
    for flag in PATTERN_FLAGS:
        count = sum(bool(row[flag]) for row in rows)
        low, high = wilson_interval(count, len(rows))
        rate, low_name, high_name = METRICS[flag]
        fields.update({flag: count, rate: count / max(len(rows), 1), low_name: low, high_name: high})
    return fields


#: What identifies one setting of one condition; the draws of a setting share all of these.
_SETTING_FIELDS = ("model", "task", "condition", "recipe", "split", "shots", "ft_samples", "seed")


def aggregate_draws(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """One record per setting: the draws of a fixed-demonstration setting become one aggregate.

    The aggregate has the mean ``accuracy`` and ``correct`` over draws, ``ci_low``/``ci_high`` the
    mean of the draws' Wilson bounds (item uncertainty), ``draws``, ``draw_accuracies``,
    ``draw_min``/``draw_max``/``draw_sd`` (between-draw spread), ``predictions`` as the list of the
    draws' files, and the mean ``prompt_tokens`` and ``wall_time_s``; the pattern-use counts, rates
    and bounds likewise become means (when every draw has them). A setting with one cell is returned
    as it is, so the function is idempotent.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for rec in records:
        groups.setdefault(tuple(rec.get(f) for f in _SETTING_FIELDS), []).append(rec)
    out = []
    for cells in groups.values():
        if len(cells) == 1:
            out.append(dict(cells[0]))
            continue
        cells = sorted(cells, key=_sort_key)
        accuracies = [float(c["accuracy"]) for c in cells]
        bounds = [ci(c) for c in cells]
        agg = dict(cells[0])
        agg.update(
            {
                "key": "+".join(str(c.get("key", "")) for c in cells),
                "draw": 0,
                "draws": [int(c.get("draw", 0)) for c in cells],
                # Within the draws' range: fmean of equal values can exceed them by one ulp.
                "accuracy": min(max(statistics.fmean(accuracies), min(accuracies)), max(accuracies)),
                "correct": statistics.fmean(float(c["correct"]) for c in cells),
                "ci_low": statistics.fmean(lo for lo, _ in bounds),
                "ci_high": statistics.fmean(hi for _, hi in bounds),
                "draw_accuracies": accuracies,
                "draw_min": min(accuracies),
                "draw_max": max(accuracies),
                "draw_sd": statistics.stdev(accuracies),
                "predictions": [c.get("predictions") for c in cells],
            }
        )
        if all(has_pattern_use(c) for c in cells):
            for flag in PATTERN_FLAGS:
                for field in (flag, *METRICS[flag]):
                    agg[field] = statistics.fmean(float(c[field]) for c in cells)
        for field in ("prompt_tokens", "wall_time_s"):
            if all(c.get(field) is not None for c in cells):
                agg[field] = round(statistics.fmean(float(c[field]) for c in cells), 3)
        if agg.get("prompt_tokens") is not None:
            agg["prompt_tokens"] = round(agg["prompt_tokens"])
        out.append(agg)
    return sort_records(out)


@dataclass(frozen=True)
class Settings:
    """A run's records with each setting's draws aggregated (:func:`aggregate_draws`), in canonical order.

    What selection, plots, verdicts, the report and the terminal table read: built once per report,
    so that none of them can choose on a single draw by being handed the raw cells.
    """

    records: tuple[Record, ...]

    @classmethod
    def aggregate(cls, records: Iterable[Mapping[str, Any]]) -> Settings:
        """The settings of ``records`` (raw cells, or already aggregated ones)."""
        return cls(tuple(aggregate_draws(records)))

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def has_condition(settings: Settings, condition: str, task: str, model: str) -> bool:
    """Whether ``condition`` has any result (any split) for ``task`` on ``model``."""
    return any(r.get("condition") == condition and r.get("task") == task and r.get("model") == model for r in settings)


def select_best(settings: Settings, condition: str, task: str, model: str) -> Record | None:
    """The ``validation`` setting with the highest accuracy for (condition, task, model), or None.

    Ties go to fewer shots / fewer fine-tuning samples (the cheaper configuration), then to the
    lower draw; with several fine-tuning recipes the choice spans them (n* and the recipe), a tie
    going to the recipe first in name order. Test cells are never looked at.
    """
    candidates = [
        r
        for r in settings
        if r.get("condition") == condition
        and r.get("task") == task
        and r.get("model") == model
        and r.get("split") == SELECTION_SPLIT
    ]
    if not candidates:
        return None
    best = min(
        candidates,
        key=lambda r: (
            -float(r["accuracy"]),
            int(r.get("shots", 0)),
            int(r.get("ft_samples", 0)),
            int(r.get("draw", 0)),
            _sort_key(r),
        ),
    )
    return dict(best)


def find_cell(settings: Settings, chosen: Mapping[str, Any], split: str) -> Record | None:
    """The setting of ``split`` configured as ``chosen`` (condition, model, task, recipe, k, n, draw, seed)."""
    fields = ("condition", "model", "task", "recipe", "shots", "ft_samples", "draw", "seed")
    for rec in settings:
        if rec.get("split") == split and all(rec.get(f) == chosen.get(f) for f in fields):
            return dict(rec)
    return None


@dataclass(frozen=True)
class Point:
    """One point of an accuracy curve: the knob, the accuracy, its item CI and the draws' range."""

    x: int
    accuracy: float
    low: float
    high: float
    draw_min: float | None = None  # between-draw spread, when the setting has several draws
    draw_max: float | None = None


def recipes(settings: Settings, task: str, model: str) -> list[str | None]:
    """The fine-tuning recipes with FT results for (task, model), in name order (None: not recorded)."""
    found = {
        r.get("recipe") for r in settings if r.get("condition") == "ft" and (r["task"], r["model"]) == (task, model)
    }
    return sorted(found, key=lambda v: (v is not None, v or ""))


_ANY = object()


def curve(
    settings: Settings,
    condition: str,
    task: str,
    model: str,
    split: str,
    metric: str = "accuracy",
    recipe: Any = _ANY,
) -> list[Point]:
    """``metric`` per k (or n): the mean over draws, the item CI, and the draws' range (accuracy only).

    ``recipe`` keeps the FT settings of one fine-tuning recipe (default: every setting).
    """
    value, _, _ = METRICS[metric]
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for r in settings:
        if (r.get("condition"), r.get("task"), r.get("model"), r.get("split")) != (condition, task, model, split):
            continue
        if (recipe is not _ANY and r.get("recipe") != recipe) or r.get(value) is None:
            continue
        groups.setdefault(knob(r), []).append(r)
    points = []
    for x in sorted(groups):
        cells = groups[x]  # several only with several seeds: their mean and the CI envelope
        cis = [ci(c, metric) for c in cells]
        spread = metric == "accuracy"
        lows = [c["draw_min"] for c in cells if spread and c.get("draw_min") is not None]
        highs = [c["draw_max"] for c in cells if spread and c.get("draw_max") is not None]
        points.append(
            Point(
                x,
                sum(float(c[value]) for c in cells) / len(cells),
                min(lo for lo, _ in cis),
                max(hi for _, hi in cis),
                min(lows) if lows else None,
                max(highs) if highs else None,
            )
        )
    return points
