"""The verdict on one split: ICL at k* against FT at n*, paired item by item on their prediction files.

With several demonstration draws, an ICL setting scores each item by its fraction of correct draws,
and the exact McNemar test becomes its generalization, the exact paired sign-flip test. The same
test on each item's shortcut flag instead of its correctness compares pattern use: which side
answers with the implicit shortcut more often (on ``test_broken``, where that answer is wrong).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclvsft.compare.records import (
    CONDITION_NAMES,
    Record,
    Settings,
    find_cell,
    has_condition,
    has_pattern_use,
    knob,
    select_best,
)
from iclvsft.compare.stats import McNemarResult, paired_sign_flip

#: Significance level of the verdict.
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """ICL at k* against FT at n* on one split: the two cells, the paired test, the verdict."""

    task: str
    model: str
    split: str
    icl: Record | None  # the split's cell at k* (None: no ICL choice or no such cell)
    ft: Record | None
    icl_choice: Record | None  # the validation cells that fixed k* and n*
    ft_choice: Record | None
    mcnemar: McNemarResult | None  # A = ICL, B = FT: b01 = ICL right and FT wrong
    verdict: str
    note: str = ""  # why a comparison or test is missing, or a pairing caveat
    #: The same paired test on the items' shortcut flags (A = ICL: b01 = only ICL answered with the
    #: shortcut); None when the cells do not record pattern use or cannot be paired.
    shortcut_test: McNemarResult | None = None
    shortcut_verdict: str = ""

    @property
    def winner(self) -> str | None:
        """Which side won: "icl", "ft", or None (no significant difference, or not tested)."""
        return _side(self.mcnemar)

    @property
    def shortcut_winner(self) -> str | None:
        """Which side used the shortcut significantly more: "icl", "ft", or None."""
        return _side(self.shortcut_test)


def _side(test: McNemarResult | None) -> str | None:
    if test is None or test.p_value >= ALPHA or test.direction == 0:
        return None
    return "icl" if test.direction > 0 else "ft"


def _read_predictions(path: Path, flag: str = "correct") -> dict[str, bool]:
    outcomes: dict[str, bool] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            item = str(row["id"])
            if item in outcomes:
                raise ValueError(f"item {item} appears twice (line {lineno})")
            outcomes[item] = bool(row[flag])
    return outcomes


def _predictions_path(rec: Mapping[str, Any], base_dir: Path) -> Path | None:
    rel = rec.get("predictions")
    if not rel:
        return None
    path = Path(rel)
    return path if path.is_absolute() else base_dir / path


def paired_test(
    icl_cell: Mapping[str, Any],
    ft_cell: Mapping[str, Any],
    base_dir: str | os.PathLike[str],
    flag: str = "correct",
) -> tuple[McNemarResult | None, str]:
    """Paired test on the two cells' prediction files, paired by item id; (None, reason) when impossible.

    One file per cell: the exact McNemar test. A cell aggregated over R draws scores each item by
    its fraction of correct draws, and the test is McNemar's generalization, the exact paired
    sign-flip test (``stats.paired_sign_flip``). ``flag`` is the per-item outcome compared:
    ``correct``, or ``shortcut`` (the answer is the item's shortcut answer) for pattern use.
    """
    scores: list[dict[str, float]] = []
    repeats: list[int] = []
    for cell in (icl_cell, ft_cell):
        rels = cell.get("predictions")
        rels = rels if isinstance(rels, list) else [rels]
        per_item: dict[str, float] = {}
        for rel in rels:
            path = _predictions_path({"predictions": rel}, Path(base_dir))
            if path is None:
                return None, f"{CONDITION_NAMES[cell['condition']]} cell has no predictions file"
            try:
                outcome = _read_predictions(path, flag)
            except FileNotFoundError:
                return None, f"predictions file {rel} is missing"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                return None, f"cannot read predictions {rel}: {exc}"
            if per_item and set(outcome) != set(per_item):
                return None, f"the draws of the {CONDITION_NAMES[cell['condition']]} cell hold different items"
            for item, correct in outcome.items():
                per_item[item] = per_item.get(item, 0.0) + float(correct) / len(rels)
        scores.append(per_item)
        repeats.append(len(rels))
    icl_out, ft_out = scores
    shared = [i for i in icl_out if i in ft_out]  # ICL's order: deterministic
    if not shared:
        return None, "the two cells share no items"
    note = ""
    if len(shared) != len(icl_out) or len(shared) != len(ft_out):
        # Should not happen (same split, same fingerprint); say so rather than test silently.
        note = f"paired on the {len(shared)} shared items (ICL {len(icl_out)}, FT {len(ft_out)} items)"
    resolution = math.lcm(*repeats)
    return paired_sign_flip([icl_out[i] for i in shared], [ft_out[i] for i in shared], resolution), note


@dataclass(frozen=True)
class ConstantAnswer:
    """What always giving one answer scores on a split: its most frequent gold answer."""

    answer: str
    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def constant_answer(
    settings: Settings, task: str, split: str, base_dir: str | os.PathLike[str]
) -> ConstantAnswer | None:
    """The split's most frequent gold answer and how many items have it, read from the first stored
    cell of ``task`` on ``split`` whose predictions can be read (every cell of a split holds the same
    items; ties: the answer seen first). None when no cell's predictions can be read."""
    for rec in settings:
        if rec["task"] != task or rec["split"] != split:
            continue
        rels = rec.get("predictions")
        for rel in rels if isinstance(rels, list) else [rels]:
            path = _predictions_path({"predictions": rel}, Path(base_dir))
            try:
                with open(path, encoding="utf-8") as handle:  # type: ignore[arg-type]
                    golds = [str(json.loads(line)["answer"]) for line in handle if line.strip()]
            except (OSError, TypeError, ValueError, KeyError):
                continue
            if golds:
                answer = max(dict.fromkeys(golds), key=golds.count)
                return ConstantAnswer(answer, golds.count(answer), len(golds))
    return None


def format_p(p: float) -> str:
    """p-values: four decimals, scientific below 1e-4."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def compare(settings: Settings, task: str, model: str, split: str, base_dir: str | os.PathLike[str]) -> Comparison:
    """ICL at the validation-chosen k* against FT at the validation-chosen n* on ``split``.

    Prediction paths in the records are resolved against ``base_dir`` (the run's output folder).
    """
    icl_choice = select_best(settings, "icl", task, model)
    ft_choice = select_best(settings, "ft", task, model)
    icl = find_cell(settings, icl_choice, split) if icl_choice else None
    ft = find_cell(settings, ft_choice, split) if ft_choice else None

    def result(verdict: str, note: str = "", test: McNemarResult | None = None, **shortcut: Any) -> Comparison:
        return Comparison(task, model, split, icl, ft, icl_choice, ft_choice, test, verdict, note, **shortcut)

    missing = []
    for name, choice, cell in (("ICL", icl_choice, icl), ("FT", ft_choice, ft)):
        if choice is None:
            has_any = has_condition(settings, name.lower(), task, model)
            missing.append(f"no {name} validation cells to choose from" if has_any else f"no {name} results")
        elif cell is None:
            symbol = "k*" if name == "ICL" else "n*"
            missing.append(f"no {name} {split} cell at {symbol}={knob(choice)}")
    if missing:
        return result("not compared: " + "; ".join(missing))
    test, note = paired_test(icl, ft, base_dir)
    k, n = f"k*={knob(icl_choice)}", ft_setting(ft_choice)
    shortcut = _shortcut_comparison(icl, ft, base_dir, k, n)
    if test is None:
        return result(f"not tested ({note})", note, **shortcut)
    if test.p_value < ALPHA and test.direction > 0:
        verdict = f"ICL ({k}) beat FT ({n}), p={format_p(test.p_value)}"
    elif test.p_value < ALPHA and test.direction < 0:
        verdict = f"FT ({n}) beat ICL ({k}), p={format_p(test.p_value)}"
    else:
        verdict = f"no significant difference (p={format_p(test.p_value)})"
    return result(verdict, note, test, **shortcut)


def ft_setting(rec: Mapping[str, Any]) -> str:
    """How a verdict names FT's chosen setting: ``n*=400``, with its recipe when recorded (``full, n*=400``)."""
    return (f"{rec['recipe']}, " if rec.get("recipe") else "") + f"n*={knob(rec)}"


def _shortcut_comparison(icl: Record, ft: Record, base_dir: str | os.PathLike[str], k: str, n: str) -> dict[str, Any]:
    """The paired test on shortcut use and its verdict, when both cells record pattern use."""
    if not (has_pattern_use(icl) and has_pattern_use(ft)):
        return {}
    test, note = paired_test(icl, ft, base_dir, flag="shortcut")
    if test is None:
        return {"shortcut_verdict": f"not tested ({note})"}
    p = format_p(test.p_value)
    if test.p_value < ALPHA and test.direction > 0:
        verdict = f"ICL ({k}) used the shortcut more than FT ({n}), p={p}"
    elif test.p_value < ALPHA and test.direction < 0:
        verdict = f"FT ({n}) used the shortcut more than ICL ({k}), p={p}"
    else:
        verdict = f"no significant difference in shortcut use (p={p})"
    return {"shortcut_test": test, "shortcut_verdict": verdict}
