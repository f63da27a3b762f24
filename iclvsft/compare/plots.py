"""The accuracy curves of one task: ICL against shots and FT against fine-tuning samples, one PNG."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from iclvsft.compare.records import (
    CONDITION_NAMES,
    HELD_OUT_SPLITS,
    VERDICT_SPLITS,
    Settings,
    curve,
    find_cell,
    knob,
    select_best,
)
from iclvsft_tasks.atomic import save_figure

_SPLIT_STYLE = {  # split: (label, linestyle, colour, alpha)
    "validation": ("validation", ":", "0.55", 0.8),
    "test": ("test (shortcut works)", "-", "tab:blue", 1.0),
    "test_broken": ("test_broken (shortcut fails)", "--", "tab:red", 1.0),
}


def plot_task(settings: Settings, task: str, model: str, path: str | os.PathLike[str]) -> Path:
    """One PNG: accuracy vs shots (ICL, left) and vs fine-tuning samples (FT, right), one y-axis."""
    # The object API with no pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_icl, ax_ft = fig.subplots(1, 2, sharey=True)
    chosen = {c: select_best(settings, c, task, model) for c in ("icl", "ft")}
    for ax, condition in ((ax_icl, "icl"), (ax_ft, "ft")):
        xs: set[int] = set()
        for split in HELD_OUT_SPLITS:
            pts = curve(settings, condition, task, model, split)
            if not pts:
                continue
            label, style, colour, alpha = _SPLIT_STYLE[split]
            x = [p.x for p in pts]
            xs.update(x)
            ax.fill_between(
                x, [p.low for p in pts], [p.high for p in pts], color=colour, alpha=0.12 * alpha, linewidth=0
            )
            ax.plot(
                x,
                [p.accuracy for p in pts],
                linestyle=style,
                color=colour,
                alpha=alpha,
                marker="o",
                markersize=4,
                label=label,
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
        best = chosen[condition]
        if best is not None:
            symbol = "k" if condition == "icl" else "n"
            ax.axvline(
                knob(best),
                color="black",
                linestyle="-.",
                linewidth=1,
                alpha=0.6,
                label=f"{symbol}*={knob(best)} (chosen on validation)",
            )
            for split in VERDICT_SPLITS:
                cell = find_cell(settings, best, split)
                if cell is not None:
                    ax.plot(
                        [knob(best)],
                        [float(cell["accuracy"])],
                        marker="*",
                        markersize=13,
                        color=_SPLIT_STYLE[split][2],
                        markeredgecolor="black",
                        linestyle="none",
                        zorder=5,
                    )
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
    ax_icl.set_xlabel("demonstrations k (in-context learning)")
    ax_ft.set_xlabel("training samples n (fine-tuning, log scale)")
    ax_icl.set_ylabel(
        "exact-match accuracy (95% Wilson CI;\nbars: range over demonstration draws)"
        if any(r.get("draws") for r in settings)
        else "exact-match accuracy (95% Wilson CI)"
    )
    ax_icl.set_ylim(0, 1)
    ax_icl.set_title("ICL")
    ax_ft.set_title("FT")
    fig.suptitle(f"{task} — {model}")
    # One legend under both panels, so that it never hides a curve.
    handles: dict[str, Any] = {}
    for ax in (ax_icl, ax_ft):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=min(len(handles), 5),
            fontsize=8,
            frameon=False,
        )
    return save_figure(fig, path, dpi=110)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def plot_filename(task: str, model: str, several_models: bool) -> str:
    """``plots/<task>.png``; with several models in one run, the model is added so files never collide."""
    return f"plots/{task}.png" if not several_models else f"plots/{task}__{_slug(model)}.png"
