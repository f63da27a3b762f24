"""Turn the comparison's cell records into results files, plots and a Markdown report.

A *record* is one evaluated cell (condition, model, task, split, shots or fine-tuning samples, draw)
as a plain dict; see ``iclvsft compare``. The choice of k (shots) and n (fine-tuning samples) is
made on the ``validation`` split only, and ``test`` / ``test_broken`` are then read for that one
choice: picking the best test cell would report the maximum of noisy estimates, biased upwards.

With fixed demonstration sets, every ICL setting has R cells (draws 1..R). The report works on
their aggregate (:func:`aggregate_draws`): the mean accuracy over draws, the item CI (the mean of
the draws' Wilson bounds: the uncertainty from the choice of test items) and the between-draw
spread (the uncertainty from the choice of demonstrations), and pairs items on their mean
correctness over draws.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclvsft.compare.stats import McNemarResult, paired_sign_flip, wilson_interval
from iclvsft_tasks.atomic import atomic_write_text, save_figure

Record = dict[str, Any]

#: Reading order of the splits everywhere (files, tables, report).
SPLIT_ORDER = ("validation", "test", "test_broken")
#: The splits the verdict is stated on.
EVAL_SPLITS = ("test", "test_broken")
#: Significance level of the verdict.
ALPHA = 0.05
#: Columns of results.csv, in order; unknown record keys follow, sorted.
CSV_COLUMNS = (
    "key",
    "model",
    "task",
    "condition",
    "split",
    "shots",
    "ft_samples",
    "draw",
    "seed",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "fingerprint",
    "prompt_tokens",
    "train_tokens",
    "wall_time_s",
    "predictions",
)
CONDITION_NAMES = {"icl": "ICL", "ft": "FT"}


# --------------------------------------------------------------------------- selection and ordering


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def _sort_key(rec: Mapping[str, Any]) -> tuple:
    # key and seed last so that the order is total even for duplicate configurations.
    return (
        str(rec.get("model", "")),
        str(rec.get("task", "")),
        str(rec.get("condition", "")),
        _split_rank(str(rec.get("split", ""))),
        int(rec.get("shots", 0)),
        int(rec.get("ft_samples", 0)),
        int(rec.get("draw", 0)),
        int(rec.get("seed", 0)),
        str(rec.get("key", "")),
    )


def sort_records(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """Records in the canonical order: model, task, condition, split, shots, ft_samples, draw."""
    return [dict(r) for r in sorted(records, key=_sort_key)]


#: What identifies one setting of one condition; the draws of a setting share all of these.
_SETTING_FIELDS = ("model", "task", "condition", "split", "shots", "ft_samples", "seed")


def aggregate_draws(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """One record per setting: the draws of a fixed-demonstration setting become one aggregate.

    The aggregate has the mean ``accuracy`` and ``correct`` over draws, ``ci_low``/``ci_high`` the
    mean of the draws' Wilson bounds (item uncertainty), ``draws``, ``draw_accuracies``,
    ``draw_min``/``draw_max``/``draw_sd`` (between-draw spread), ``predictions`` as the list of the
    draws' files, and the mean ``prompt_tokens`` and ``wall_time_s``. A setting with one cell is
    returned as it is, so the function is idempotent.
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
        bounds = [_ci(c) for c in cells]
        agg = dict(cells[0])
        agg.update(
            {
                "key": "+".join(str(c.get("key", "")) for c in cells),
                "draw": 0,
                "draws": [int(c.get("draw", 0)) for c in cells],
                "accuracy": statistics.fmean(accuracies),
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
        for field in ("prompt_tokens", "wall_time_s"):
            if all(c.get(field) is not None for c in cells):
                agg[field] = round(statistics.fmean(float(c[field]) for c in cells), 3)
        if agg.get("prompt_tokens") is not None:
            agg["prompt_tokens"] = round(agg["prompt_tokens"])
        out.append(agg)
    return sort_records(out)


def _setting(rec: Mapping[str, Any]) -> int:
    """The knob of a cell: k for ICL, n for FT."""
    return int(rec["shots"]) if rec.get("condition") == "icl" else int(rec["ft_samples"])


def select_best(records: Iterable[Mapping[str, Any]], condition: str, task: str, model: str) -> Record | None:
    """The ``validation`` cell with the highest accuracy for (condition, task, model), or None.

    Ties go to fewer shots / fewer fine-tuning samples (the cheaper configuration), then to the
    lower draw. Test cells are never looked at.
    """
    candidates = [
        r
        for r in aggregate_draws(records)
        if r.get("condition") == condition
        and r.get("task") == task
        and r.get("model") == model
        and r.get("split") == "validation"
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


def find_cell(records: Iterable[Mapping[str, Any]], chosen: Mapping[str, Any], split: str) -> Record | None:
    """The cell of ``split`` with the same configuration as ``chosen`` (condition, model, task, k, n, draw, seed)."""
    fields = ("condition", "model", "task", "shots", "ft_samples", "draw", "seed")
    for rec in aggregate_draws(records):
        if rec.get("split") == split and all(rec.get(f) == chosen.get(f) for f in fields):
            return dict(rec)
    return None


# --------------------------------------------------------------------------- results files


def write_results(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` under ``out_dir``; same records, same bytes."""
    rows = sort_records(records)
    out = Path(out_dir)
    json_path, csv_path = out / "results.json", out / "results.csv"
    atomic_write_text(json_path, json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    columns = list(CSV_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_csv_value(r.get(c)) for c in columns])
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class _Point:
    x: int
    accuracy: float
    low: float
    high: float
    draw_min: float | None = None  # between-draw spread, when the setting has several draws
    draw_max: float | None = None


def _ci(rec: Mapping[str, Any]) -> tuple[float, float]:
    if rec.get("ci_low") is not None and rec.get("ci_high") is not None:
        return float(rec["ci_low"]), float(rec["ci_high"])
    return wilson_interval(int(rec["correct"]), int(rec["n"]))


def _curve(records: Iterable[Mapping[str, Any]], condition: str, task: str, model: str, split: str) -> list[_Point]:
    """Accuracy per k (or n): the mean over draws, the item CI, and the draws' range."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for r in aggregate_draws(records):
        if (r.get("condition"), r.get("task"), r.get("model"), r.get("split")) == (condition, task, model, split):
            groups.setdefault(_setting(r), []).append(r)
    points = []
    for x in sorted(groups):
        cells = groups[x]  # several only with several seeds: their mean and the CI envelope
        cis = [_ci(c) for c in cells]
        lows = [c["draw_min"] for c in cells if c.get("draw_min") is not None]
        highs = [c["draw_max"] for c in cells if c.get("draw_max") is not None]
        points.append(
            _Point(
                x,
                sum(float(c["accuracy"]) for c in cells) / len(cells),
                min(lo for lo, _ in cis),
                max(hi for _, hi in cis),
                min(lows) if lows else None,
                max(highs) if highs else None,
            )
        )
    return points


# --------------------------------------------------------------------------- plots

_SPLIT_STYLE = {  # split: (label, linestyle, colour, alpha)
    "validation": ("validation", ":", "0.55", 0.8),
    "test": ("test (shortcut works)", "-", "tab:blue", 1.0),
    "test_broken": ("test_broken (shortcut fails)", "--", "tab:red", 1.0),
}


def plot_task(records: Iterable[Mapping[str, Any]], task: str, model: str, path: str | os.PathLike[str]) -> Path:
    """One PNG: accuracy vs shots (ICL, left) and vs fine-tuning samples (FT, right), one y-axis."""
    # The object API with no pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    records = list(records)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_icl, ax_ft = fig.subplots(1, 2, sharey=True)
    chosen = {c: select_best(records, c, task, model) for c in ("icl", "ft")}
    for ax, condition in ((ax_icl, "icl"), (ax_ft, "ft")):
        xs: set[int] = set()
        for split in SPLIT_ORDER:
            pts = _curve(records, condition, task, model, split)
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
                _setting(best),
                color="black",
                linestyle="-.",
                linewidth=1,
                alpha=0.6,
                label=f"{symbol}*={_setting(best)} (chosen on validation)",
            )
            for split in EVAL_SPLITS:
                cell = find_cell(records, best, split)
                if cell is not None:
                    ax.plot(
                        [_setting(best)],
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
        if any(r.get("draws") for r in aggregate_draws(records))
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


# --------------------------------------------------------------------------- paired comparison


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

    @property
    def winner(self) -> str | None:
        """Which side won: "icl", "ft", or None (no significant difference, or not tested)."""
        if self.mcnemar is None or self.mcnemar.p_value >= ALPHA or self.mcnemar.direction == 0:
            return None
        return "icl" if self.mcnemar.direction > 0 else "ft"


def _read_predictions(path: Path) -> dict[str, bool]:
    outcomes: dict[str, bool] = {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            item = str(row["id"])
            if item in outcomes:
                raise ValueError(f"item {item} appears twice (line {lineno})")
            outcomes[item] = bool(row["correct"])
    return outcomes


def _predictions_path(rec: Mapping[str, Any], base_dir: Path) -> Path | None:
    rel = rec.get("predictions")
    if not rel:
        return None
    path = Path(rel)
    return path if path.is_absolute() else base_dir / path


def paired_test(
    icl_cell: Mapping[str, Any], ft_cell: Mapping[str, Any], base_dir: str | os.PathLike[str]
) -> tuple[McNemarResult | None, str]:
    """Paired test on the two cells' prediction files, paired by item id; (None, reason) when impossible.

    One file per cell: the exact McNemar test. A cell aggregated over R draws scores each item by
    its fraction of correct draws, and the test is McNemar's generalization, the exact paired
    sign-flip test (``stats.paired_sign_flip``).
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
                outcome = _read_predictions(path)
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


def format_p(p: float) -> str:
    """p-values: four decimals, scientific below 1e-4."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def compare(
    records: Iterable[Mapping[str, Any]], task: str, model: str, split: str, base_dir: str | os.PathLike[str]
) -> Comparison:
    """ICL at the validation-chosen k* against FT at the validation-chosen n* on ``split``.

    Prediction paths in the records are resolved against ``base_dir`` (the run's output folder).
    """
    records = aggregate_draws(records)
    icl_choice = select_best(records, "icl", task, model)
    ft_choice = select_best(records, "ft", task, model)
    icl = find_cell(records, icl_choice, split) if icl_choice else None
    ft = find_cell(records, ft_choice, split) if ft_choice else None

    def result(verdict: str, note: str = "", test: McNemarResult | None = None) -> Comparison:
        return Comparison(task, model, split, icl, ft, icl_choice, ft_choice, test, verdict, note)

    missing = []
    for name, choice, cell in (("ICL", icl_choice, icl), ("FT", ft_choice, ft)):
        if choice is None:
            has_any = _has_condition(records, name.lower(), task, model)
            missing.append(f"no {name} validation cells to choose from" if has_any else f"no {name} results")
        elif cell is None:
            knob = "k*" if name == "ICL" else "n*"
            missing.append(f"no {name} {split} cell at {knob}={_setting(choice)}")
    if missing:
        return result("not compared: " + "; ".join(missing))
    test, note = paired_test(icl, ft, base_dir)
    k, n = _setting(icl_choice), _setting(ft_choice)
    if test is None:
        return result(f"not tested ({note})", note)
    if test.p_value < ALPHA and test.direction > 0:
        verdict = f"ICL (k*={k}) beat FT (n*={n}), p={format_p(test.p_value)}"
    elif test.p_value < ALPHA and test.direction < 0:
        verdict = f"FT (n*={n}) beat ICL (k*={k}), p={format_p(test.p_value)}"
    else:
        verdict = f"no significant difference (p={format_p(test.p_value)})"
    return result(verdict, note, test)


def _has_condition(records: Sequence[Mapping[str, Any]], condition: str, task: str, model: str) -> bool:
    return any(r.get("condition") == condition and r.get("task") == task and r.get("model") == model for r in records)


# --------------------------------------------------------------------------- report


def _acc_ci(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "–"
    lo, hi = _ci(rec)
    if rec.get("draws"):
        return (
            f"{float(rec['accuracy']):.3f} [{lo:.3f}, {hi:.3f}] (mean of {len(rec['draws'])} draws, "
            f"range {float(rec['draw_min']):.3f}–{float(rec['draw_max']):.3f}, n={int(rec['n'])})"
        )
    return f"{float(rec['accuracy']):.3f} [{lo:.3f}, {hi:.3f}] ({int(rec['correct'])}/{int(rec['n'])})"


def _only(side: str, test: McNemarResult) -> str:
    return f"only {side} got right" if test.method == "exact McNemar" else f"{side} scored higher on"


def _tokens(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _meta_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_meta_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_meta_value(v)}" for k, v in value.items())
    return str(value)


_META_LABELS = (
    ("model", "model"),
    ("tasks", "tasks"),
    ("seed", "data seed"),
    ("split_sizes", "split sizes"),
    ("machine", "machine"),
    ("date", "date"),
    ("command", "command line"),
    ("wall_time_s", "wall time (s)"),
)


def _render_meta(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    done = set()
    for key, label in _META_LABELS:
        if key in meta:
            done.add(key)
            value = meta[key]
            if key == "command":
                text = shlex.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
                lines.append(f"- **{label}**: `{text}`")
            else:
                lines.append(f"- **{label}**: {_meta_value(value)}")
    # Either name: the run stores them as split_fingerprints ({task: {split: hash}}).
    fp_key = "fingerprints" if "fingerprints" in meta else "split_fingerprints"
    fingerprints = meta.get(fp_key)
    done.add(fp_key)
    for key in sorted(k for k in meta if k not in done):
        lines.append(f"- **{key.replace('_', ' ')}**: {_meta_value(meta[key])}")
    if isinstance(fingerprints, Mapping) and fingerprints:
        lines += ["", "Split fingerprints (hash of each split's content; every result stores its own):", ""]
        if all(isinstance(v, Mapping) for v in fingerprints.values()):
            splits = sorted({s for v in fingerprints.values() for s in v}, key=_split_rank)
            lines.append("| task | " + " | ".join(splits) + " |")
            lines.append("|---|" + "---|" * len(splits))
            for task, per_split in fingerprints.items():
                lines.append(f"| `{task}` | " + " | ".join(f"`{per_split.get(s, '–')}`" for s in splits) + " |")
        else:
            lines += [f"- `{k}`: `{_meta_value(v)}`" for k, v in fingerprints.items()]
    elif fingerprints:
        lines.append(f"- **fingerprints**: {_meta_value(fingerprints)}")
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def plot_filename(task: str, model: str, several_models: bool) -> str:
    """``plots/<task>.png``; with several models in one run, the model is added so files never collide."""
    return f"plots/{task}.png" if not several_models else f"plots/{task}__{_slug(model)}.png"


def _ordered(values: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def write_report(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    meta: Mapping[str, Any],
    base_dir: str | os.PathLike[str] | None = None,
    plots: bool = True,
) -> Path:
    """Write the plots (``plots/*.png``) and ``report.md`` under ``out_dir``; return the report path.

    Prediction paths in the records are relative to ``base_dir`` (default ``out_dir``). With
    ``plots=False`` the images are linked but not drawn (the caller has written them with
    :func:`plot_task` at :func:`plot_filename`).
    """
    records = aggregate_draws(records)
    out = Path(out_dir)
    base = Path(base_dir) if base_dir is not None else out
    meta_tasks = meta.get("tasks") or []
    if isinstance(meta_tasks, str):
        meta_tasks = [t for t in meta_tasks.split(",") if t]
    tasks = _ordered([str(r["task"]) for r in records] + list(meta_tasks), list(meta_tasks))
    models = _ordered([str(r["model"]) for r in records])
    if not models and meta.get("model"):
        models = [str(meta["model"])]
    several = len(models) > 1

    lines = [f"# ICL vs fine-tuning: {', '.join(models) or 'no results'}", ""]
    lines += _render_meta(meta)
    lines += [
        "",
        (
            "k (shots) and n (fine-tuning samples) were chosen on the **validation** split, never on test: "
            "each condition's best validation cell (ties: the cheaper setting) fixes k* and n*, and only those "
            "two cells are compared on `test` (items where the shortcut works) and `test_broken` (items where it "
            "fails). Accuracies are exact match with 95% Wilson intervals; the p-value is an exact two-sided "
            "McNemar test on the same items, paired by id (with several demonstration draws: the mean over "
            "draws, the mean of the draws' Wilson bounds, the draws' range, and McNemar's generalization to "
            "per-item mean correctness, an exact paired sign-flip test); a side wins when it is ahead with "
            f"p < {ALPHA}."
        ),
        "",
    ]

    comparisons = {(m, t, s): compare(records, t, m, s, base) for m in models for t in tasks for s in EVAL_SPLITS}

    lines += [
        "## Verdicts",
        "",
        (
            "| model | task | split | ICL k* | ICL accuracy | FT n* | FT accuracy | "
            "ICL-better / FT-better items | p | verdict |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (m, t, s), c in comparisons.items():
        k = _setting(c.icl_choice) if c.icl_choice else "–"
        n = _setting(c.ft_choice) if c.ft_choice else "–"
        disc = f"{c.mcnemar.b01} / {c.mcnemar.b10}" if c.mcnemar else "–"
        p = format_p(c.mcnemar.p_value) if c.mcnemar else "–"
        lines.append(
            f"| {m} | `{t}` | {s} | {k} | {_acc_ci(c.icl)} | {n} | {_acc_ci(c.ft)} | {disc} | {p} | {c.verdict} |"
        )
    lines.append("")

    for m in models:
        for t in tasks:
            lines += [f"## `{t}`" + (f" — {m}" if several else ""), ""]
            if not any(r["task"] == t and r["model"] == m for r in records):
                lines += ["No results for this task.", ""]
                continue
            rel = plot_filename(t, m, several)
            if plots:
                plot_task(records, t, m, out / rel)
            lines += [f"![{t}: accuracy vs shots (ICL) and vs fine-tuning samples (FT)]({rel})", ""]
            for cond, knob in (("icl", "k*"), ("ft", "n*")):
                choice = select_best(records, cond, t, m)
                name = CONDITION_NAMES[cond]
                if choice is None:
                    why = "no results" if not _has_condition(records, cond, t, m) else "no validation cells"
                    lines.append(f"- {name}: {why} for this task, so it is not compared.")
                else:
                    lines.append(
                        f"- {name}: {knob}={_setting(choice)} chosen on validation "
                        f"(validation accuracy {_acc_ci(choice)})."
                    )
            lines.append("")
            for s in EVAL_SPLITS:
                c = comparisons[(m, t, s)]
                lines.append(f"**{s}**: {c.verdict}.")
                if c.icl is not None or c.ft is not None:
                    lines.append(
                        f"ICL {_acc_ci(c.icl)} vs FT {_acc_ci(c.ft)}"
                        + (
                            f"; {c.mcnemar.b01} items {_only('ICL', c.mcnemar)}, {c.mcnemar.b10} "
                            f"{_only('FT', c.mcnemar)} (of {c.mcnemar.n} paired; {c.mcnemar.method})."
                            if c.mcnemar
                            else "."
                        )
                    )
                if c.note and c.mcnemar is not None:
                    lines.append(f"Note: {c.note}.")
                lines.append("")

    lines += [
        "## Tokens",
        "",
        (
            "What each side consumed for its chosen setting: ICL pays in prompt tokens at every "
            "evaluation (k* demonstrations per item); FT pays once in training tokens, then evaluates 0-shot."
        ),
        "",
        (
            "| model | task | ICL k* | ICL prompt tokens (test) | FT n* | FT training tokens | "
            "FT prompt tokens (test) | FT total |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        for t in tasks:
            c = comparisons.get((m, t, "test"))
            if c is None or (c.icl_choice is None and c.ft_choice is None):
                continue
            icl_tok = c.icl.get("prompt_tokens") if c.icl else None
            train_tok = ft_eval_tok = None
            if c.ft_choice is not None:
                train_tok = (c.ft or c.ft_choice).get("train_tokens")
                ft_eval_tok = c.ft.get("prompt_tokens") if c.ft else None
            total = (int(train_tok) + int(ft_eval_tok)) if train_tok is not None and ft_eval_tok is not None else None
            k = _setting(c.icl_choice) if c.icl_choice else "–"
            n = _setting(c.ft_choice) if c.ft_choice else "–"
            lines.append(
                f"| {m} | `{t}` | {k} | {_tokens(icl_tok)} | {n} | {_tokens(train_tok)} | "
                f"{_tokens(ft_eval_tok)} | {_tokens(total)} |"
            )
    lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def append_section(report_path: str | os.PathLike[str], lines: Sequence[str]) -> Path:
    """Append Markdown ``lines`` (e.g. the circuit-shift section) to an existing report, atomically."""
    path = Path(report_path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, text.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n")
    return path


# --------------------------------------------------------------------------- terminal


def summary_table(records: Iterable[Mapping[str, Any]]) -> str:
    """A fixed-width table for the terminal: accuracy per k (ICL) and per n (FT); * marks k* and n*."""
    records = aggregate_draws(records)
    if not records:
        return "no results"
    shots = sorted({int(r["shots"]) for r in records if r.get("condition") == "icl"})
    samples = sorted({int(r["ft_samples"]) for r in records if r.get("condition") == "ft"})
    models = _ordered(str(r["model"]) for r in records)
    tasks = _ordered(str(r["task"]) for r in records)
    splits = sorted({str(r["split"]) for r in records}, key=_split_rank)
    header = ["task", "split"] + [f"k={k} " for k in shots] + ["|"] + [f"n={n} " for n in samples] + ["|", "k*", "n*"]
    rows = []
    for m in models:
        for t in tasks:
            best = {c: select_best(records, c, t, m) for c in ("icl", "ft")}
            for s in splits:
                cells = []
                for cond, values in (("icl", shots), ("ft", samples)):
                    curve = {p.x: p.accuracy for p in _curve(records, cond, t, m, s)}
                    for v in values:
                        # A blank where others have "*" keeps the decimal points aligned.
                        mark = "*" if best[cond] is not None and _setting(best[cond]) == v else " "
                        cells.append(f"{curve[v]:.3f}{mark}" if v in curve else "- ")
                    cells.append("|")
                if not any(c not in ("- ", "|") for c in cells):
                    continue
                k = str(_setting(best["icl"])) if best["icl"] else "-"
                n = str(_setting(best["ft"])) if best["ft"] else "-"
                rows.append((m, [t, s] + cells + [k, n]))
    widths = [max([len(header[i])] + [len(r[i]) for _, r in rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = []
    for m in models:
        model_rows = [r for mm, r in rows if mm == m]
        if not model_rows:
            continue
        out += [f"model: {m}   (* = chosen on validation)", fmt(header)] + [fmt(r) for r in model_rows]
    return "\n".join(out)
