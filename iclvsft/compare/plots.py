"""The curves of one task (ICL against shots, FT against fine-tuning samples; accuracy, and pattern use
when recorded), one PNG per task and model; with several models, one figure across models."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iclvsft.compare.records import (
    CONDITION_NAMES,
    HELD_OUT_SPLITS,
    PATTERN_SPLIT,
    VERDICT_SPLITS,
    Settings,
    ci,
    curve,
    find_cell,
    has_pattern_use,
    knob,
    recipes,
    select_best,
)
from iclvsft_tasks.atomic import save_figure

#: The figure across models of a run with several.
MODELS_PLOT = "plots/models.png"
#: Markers of the fine-tuning recipes' curves, in recipe order.
_RECIPE_MARKERS = ("o", "s", "^", "D")

_SPLIT_STYLE = {  # split: (label, linestyle, colour, alpha)
    "validation": ("validation", ":", "0.55", 0.8),
    "test": ("test (shortcut works)", "-", "tab:blue", 1.0),
    "test_broken": ("test_broken (shortcut fails)", "--", "tab:red", 1.0),
}


def plot_task(settings: Settings, task: str, model: str, path: str | os.PathLike[str]) -> Path:
    """One PNG: accuracy vs shots (ICL, left) and vs fine-tuning samples (FT, right), one y-axis; one set of
    FT curves per recipe; when the records measure pattern use, a second row with the shortcut and
    invalid rates on ``PATTERN_SPLIT``."""
    # The object API with no pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.figure import Figure

    pattern = any(has_pattern_use(r) for r in settings if (r.get("task"), r.get("model")) == (task, model))
    fig = Figure(figsize=(11, 8.2 if pattern else 4.4), layout="constrained")
    axes = fig.subplots(2 if pattern else 1, 2, sharey="row", sharex="col", squeeze=False)
    ax_icl, ax_ft = axes[0]
    chosen = {c: select_best(settings, c, task, model) for c in ("icl", "ft")}
    ft_recipes = recipes(settings, task, model)
    for column, condition in enumerate(("icl", "ft")):
        ax = axes[0][column]
        # FT: one set of curves per recipe (marked by its marker and named in the legend when several).
        several = condition == "ft" and len(ft_recipes) > 1
        variants = [(r, i) for i, r in enumerate(ft_recipes)] if several else [(None, 0)]
        xs: set[int] = set()
        for recipe, index in variants:
            only = {"recipe": recipe} if len(variants) > 1 else {}
            suffix = f", {recipe}" if len(variants) > 1 else ""
            for split in HELD_OUT_SPLITS:
                pts = curve(settings, condition, task, model, split, **only)
                xs.update(p.x for p in pts)
                _draw(ax, pts, split, label_suffix=suffix, marker=_RECIPE_MARKERS[index % len(_RECIPE_MARKERS)])
            if pattern:
                low_ax = axes[1][column]
                for metric, style in (("shortcut", "-"), ("invalid", ":")):
                    pts = curve(settings, condition, task, model, PATTERN_SPLIT, metric=metric, **only)
                    xs.update(p.x for p in pts)
                    _draw(
                        low_ax,
                        pts,
                        PATTERN_SPLIT,
                        label=f"{metric} rate, {PATTERN_SPLIT}{suffix}",
                        style=style,
                        colour="tab:purple" if metric == "shortcut" else "0.45",
                        marker=_RECIPE_MARKERS[index % len(_RECIPE_MARKERS)],
                    )
        best = chosen[condition]
        for row in axes:
            _mark_choice(row[column], settings, best, condition, metric=None if row[0] is ax_icl else "shortcut")
        for row in axes:
            _knob_axis(row[column], xs, condition)
    ax_icl.set_ylabel(
        "exact-match accuracy (95% Wilson CI;\nbars: range over demonstration draws)"
        if any(r.get("draws") for r in settings)
        else "exact-match accuracy (95% Wilson CI)"
    )
    ax_icl.set_ylim(0, 1)
    ax_icl.set_title("ICL")
    ax_ft.set_title("FT")
    if pattern:
        axes[1][0].set_ylabel("share of answers (95% Wilson CI)")
        axes[1][0].set_ylim(0, 1)
        axes[1][0].set_title(f"ICL: pattern use on {PATTERN_SPLIT}")
        axes[1][1].set_title(f"FT: pattern use on {PATTERN_SPLIT}")
    bottom = axes[-1]
    bottom[0].set_xlabel("demonstrations k (in-context learning)")
    bottom[1].set_xlabel("training samples n (fine-tuning, log scale)")
    fig.suptitle(f"{task} — {model}")
    _shared_legend(fig, axes, max_columns=5)
    return save_figure(fig, path, dpi=110)


def _shared_legend(fig: Any, axes: Any, max_columns: int) -> None:
    """One legend under all panels, each label once, so that it never hides a curve."""
    handles: dict[str, Any] = {}
    for ax in (a for row in axes for a in row):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(len(handles), max_columns),
            fontsize=8,
            frameon=False,
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def plot_filename(task: str, model: str, several_models: bool) -> str:
    """``plots/<task>.png``; with several models in one run, the model is added so files never collide."""
    return f"plots/{task}.png" if not several_models else f"plots/{task}__{_slug(model)}.png"


def _draw(
    ax: Any,
    pts: Sequence[Any],
    split: str,
    label: str | None = None,
    label_suffix: str = "",
    style: str | None = None,
    colour: str | None = None,
    marker: str = "o",
) -> None:
    """One curve with its CI band and, where the points have them, the draws' range as bars."""
    if not pts:
        return
    split_label, split_style, split_colour, alpha = _SPLIT_STYLE[split]
    colour = colour or split_colour
    x = [p.x for p in pts]
    ax.fill_between(x, [p.low for p in pts], [p.high for p in pts], color=colour, alpha=0.12 * alpha, linewidth=0)
    ax.plot(
        x,
        [p.accuracy for p in pts],
        linestyle=style or split_style,
        color=colour,
        alpha=alpha,
        marker=marker,
        markersize=4,
        label=(label or split_label) + label_suffix,
    )
    spread = [p for p in pts if p.draw_min is not None]
    if spread:  # the range over demonstration draws, next to the item CI band
        ax.errorbar(
            [p.x for p in spread],
            [p.accuracy for p in spread],
            yerr=[[p.accuracy - p.draw_min for p in spread], [p.draw_max - p.accuracy for p in spread]],
            fmt="none",
            ecolor=colour,
            alpha=0.7 * alpha,
            capsize=3,
            linewidth=1,
        )


def _mark_choice(ax: Any, settings: Settings, best: Any, condition: str, metric: str | None) -> None:
    """The validation choice: a vertical line, and stars on the verdict splits (or the pattern split)."""
    if best is None:
        return
    symbol = "k" if condition == "icl" else "n"
    recipe = f", {best['recipe']}" if condition == "ft" and best.get("recipe") else ""
    ax.axvline(
        knob(best),
        color="black",
        linestyle="-.",
        linewidth=1,
        alpha=0.6,
        label=f"{symbol}*={knob(best)}{recipe} (chosen on validation)",
    )
    for split in VERDICT_SPLITS if metric is None else (PATTERN_SPLIT,):
        cell = find_cell(settings, best, split)
        field = "accuracy" if metric is None else f"{metric}_rate"
        if cell is not None and cell.get(field) is not None:
            ax.plot(
                [knob(best)],
                [float(cell[field])],
                marker="*",
                markersize=13,
                color=_SPLIT_STYLE[split][2] if metric is None else "tab:purple",
                markeredgecolor="black",
                linestyle="none",
                zorder=5,
            )


def _knob_axis(ax: Any, xs: set[int], condition: str) -> None:
    """k on a base-2 symlog axis (k=0 fits), n on a log axis; ticks at the measured values."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if xs:
        if condition == "icl" or min(xs) <= 0:
            # Symlog, base 2, linear below 1: k=0 fits, and 0,1,2,4,8... sit evenly spaced.
            thresh = 1 if condition == "icl" else min([v for v in xs if v > 0] or [1])
            ax.set_xscale("symlog", base=2 if condition == "icl" else 10, linthresh=thresh)
        else:
            if len(xs) == 1:  # one milestone: give the log axis a width of its own
                ax.set_xlim(min(xs) / 2, min(xs) * 2)
            ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(xs)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.text(
            0.5,
            0.5,
            f"no {CONDITION_NAMES[condition]} results",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
        ax.set_xticks([])
    ax.grid(True, alpha=0.3)


def plot_models(
    settings: Settings,
    tasks: Sequence[str],
    models: Sequence[str],
    path: str | os.PathLike[str],
    sizes: Mapping[str, int] | None = None,
) -> Path:
    """One PNG across models: per task (columns), ICL at k* and FT at n* against model size, on each
    verdict split (rows) and, when recorded, the shortcut rate on ``PATTERN_SPLIT`` (last row).

    ``sizes``: parameters per model label; models without a size are placed in the given order.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    sizes = sizes or {}
    known = all(sizes.get(m) for m in models)
    order = sorted(models, key=lambda m: sizes[m]) if known else list(models)
    xs = [sizes[m] for m in order] if known else list(range(len(order)))
    rows = [(s, "accuracy") for s in VERDICT_SPLITS]
    if any(map(has_pattern_use, settings)):
        rows.append((PATTERN_SPLIT, "shortcut"))
    fig = Figure(figsize=(2.6 * max(len(tasks), 2) + 1, 2.5 * len(rows) + 1), layout="constrained")
    axes = fig.subplots(len(rows), max(len(tasks), 1), sharey=True, squeeze=False)
    for column, task in enumerate(tasks):
        for row, (split, metric) in enumerate(rows):
            ax = axes[row][column]
            for condition, colour in (("icl", "tab:green"), ("ft", "tab:orange")):
                ys, lows, highs, at = [], [], [], []
                for x, model in zip(xs, order):
                    best = select_best(settings, condition, task, model)
                    cell = find_cell(settings, best, split) if best else None
                    value = cell.get("accuracy" if metric == "accuracy" else f"{metric}_rate") if cell else None
                    if value is None:
                        continue
                    low, high = ci(cell, metric)
                    at.append(x)
                    ys.append(float(value))
                    lows.append(max(0.0, float(value) - low))
                    highs.append(max(0.0, high - float(value)))
                if at:
                    symbol = "k*" if condition == "icl" else "n*"
                    ax.errorbar(
                        at,
                        ys,
                        yerr=[lows, highs],
                        color=colour,
                        marker="o",
                        markersize=4,
                        capsize=3,
                        label=f"{CONDITION_NAMES[condition]} at {symbol}",
                    )
            if known:
                ax.set_xscale("log")
            ax.set_xticks(xs, [_short(m) for m in order], fontsize=7, rotation=30)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_ylim(0, 1)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(task, fontsize=9)
            if column == 0:
                what = "accuracy" if metric == "accuracy" else "shortcut rate"
                ax.set_ylabel(f"{what}, {split}", fontsize=8)
    size = " (parameters)" if known else ""
    fig.suptitle(f"ICL at k* and FT at n* (chosen on validation) against model size{size}")
    _shared_legend(fig, axes, max_columns=2)
    return save_figure(fig, path, dpi=110)


def _short(model: str) -> str:
    """A model's tick label: the last path or hub component."""
    return model.rstrip("/").rsplit("/", 1)[-1]
