"""``report.md``: the run's metadata, the verdicts, a section per task, the tokens, the circuit shift.

Each task's section links its plot and states k*, n* and the verdict on each of ``VERDICT_SPLITS``;
when the records measure pattern use, a table compares the shortcut and invalid rates of ICL at k*
and FT at n* on ``PATTERN_SPLIT``, with the paired test on shortcut use; with several models, a
figure plots the chosen settings against model size. The tokens table says what each side
consumed at its chosen setting. The circuit-shift section, when
the run analysed it, is an input (:mod:`iclvsft.compare.circuit_section`) written last.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iclvsft.compare.plots import MODELS_PLOT, plot_filename, plot_models, plot_task
from iclvsft.compare.records import (
    CONDITION_NAMES,
    PATTERN_SPLIT,
    VERDICT_SPLITS,
    Settings,
    ci,
    has_condition,
    has_pattern_use,
    knob,
    ordered,
    select_best,
    split_rank,
)
from iclvsft.compare.stats import McNemarResult
from iclvsft.compare.verdicts import ALPHA, Comparison, compare, constant_answer, format_p
from iclvsft_tasks.atomic import atomic_write_text
from iclvsft_tasks.data.spec import HELD_OUT_SPLITS


def _acc_ci(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "–"
    lo, hi = ci(rec)
    if rec.get("draws"):
        return (
            f"{float(rec['accuracy']):.3f} [{lo:.3f}, {hi:.3f}] (mean of {len(rec['draws'])} draws, "
            f"range {float(rec['draw_min']):.3f}–{float(rec['draw_max']):.3f}, n={int(rec['n'])})"
        )
    return f"{float(rec['accuracy']):.3f} [{lo:.3f}, {hi:.3f}] ({int(rec['correct'])}/{int(rec['n'])})"


def _rate_ci(rec: Mapping[str, Any] | None, metric: str) -> str:
    """A pattern-use rate with its Wilson interval (the mean over draws for an aggregate)."""
    if rec is None or not has_pattern_use(rec):
        return "–"
    lo, hi = ci(rec, metric)
    return f"{float(rec[f'{metric}_rate']):.3f} [{lo:.3f}, {hi:.3f}]"


def _n_star(rec: Mapping[str, Any] | None) -> str:
    """FT's chosen n for a table cell, with its recipe when recorded."""
    if rec is None:
        return "–"
    return f"{knob(rec)}" + (f" ({rec['recipe']})" if rec.get("recipe") else "")


def _constant_answer_lines(settings: Settings, tasks: Sequence[str], base: Path) -> list[str]:
    """What always giving each split's most frequent gold answer scores: the floor a side must clear."""
    rows = []
    for t in tasks:
        for s in HELD_OUT_SPLITS:
            const = constant_answer(settings, t, s, base)
            if const is not None:
                rows.append(f"| `{t}` | {s} | `{const.answer}` | {const.accuracy:.3f} ({const.correct}/{const.n}) |")
    if not rows:
        return []
    return [
        "## Constant answers",
        "",
        (
            "The accuracy of always giving a split's most frequent gold answer (read from the stored predictions; "
            "the same items for every model): a side that scores near it may have learnt which answer is common, "
            "not the task. On a split whose items all share one gold answer, a model that always gives it scores "
            "1.000 without reading the items."
        ),
        "",
        "| task | split | most frequent answer | accuracy of always giving it |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _pattern_use_lines(comparisons: Mapping[tuple[str, str, str], Comparison]) -> list[str]:
    """The pattern-use table on ``PATTERN_SPLIT``: shortcut and invalid rates at k* and n*, paired test."""
    rows = [c for (_, _, s), c in comparisons.items() if s == PATTERN_SPLIT]
    if not any(has_pattern_use(r) for c in rows for r in (c.icl, c.ft) if r):
        return []
    lines = [
        "## Pattern use",
        "",
        (
            f"On `{PATTERN_SPLIT}` the shortcut gives a wrong answer, so accuracy there cannot tell whether a side "
            "picked up the implicit pattern; the **shortcut rate** can: the share of answers equal to the item's "
            "`shortcut_answer`. The **invalid rate** is the share of answers that could not be read. Both with 95% "
            "Wilson intervals (several draws: the mean of the draws' rates and bounds), at the same k* and n* as "
            "above; p is the same paired test on each item's shortcut use, and a side uses the shortcut more when "
            f"it is ahead with p < {ALPHA}. Every cell's rates, on every split, are in `results.json`."
        ),
        "",
        (
            "| model | task | ICL k* | ICL shortcut rate | ICL invalid rate | FT n* | FT shortcut rate | "
            "FT invalid rate | ICL-more / FT-more items | p | verdict |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        k = knob(c.icl_choice) if c.icl_choice else "–"
        test = c.shortcut_test
        disc = f"{test.b01} / {test.b10}" if test else "–"
        p = format_p(test.p_value) if test else "–"
        verdict = c.shortcut_verdict or (c.verdict if c.verdict.startswith("not compared") else "not measured")
        lines.append(
            f"| {c.model} | `{c.task}` | {k} | {_rate_ci(c.icl, 'shortcut')} | {_rate_ci(c.icl, 'invalid')} | "
            f"{_n_star(c.ft_choice)} | {_rate_ci(c.ft, 'shortcut')} | {_rate_ci(c.ft, 'invalid')} | {disc} | {p} | "
            f"{verdict} |"
        )
    return lines + [""]


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
            splits = sorted({s for v in fingerprints.values() for s in v}, key=split_rank)
            lines.append("| task | " + " | ".join(splits) + " |")
            lines.append("|---|" + "---|" * len(splits))
            for task, per_split in fingerprints.items():
                lines.append(f"| `{task}` | " + " | ".join(f"`{per_split.get(s, '–')}`" for s in splits) + " |")
        else:
            lines += [f"- `{k}`: `{_meta_value(v)}`" for k, v in fingerprints.items()]
    elif fingerprints:
        lines.append(f"- **fingerprints**: {_meta_value(fingerprints)}")
    return lines


def write_report(
    settings: Settings,
    out_dir: str | os.PathLike[str],
    meta: Mapping[str, Any],
    base_dir: str | os.PathLike[str] | None = None,
    plots: bool = True,
    circuit_section: Sequence[str] = (),
) -> Path:
    """Write the plots (``plots/*.png``) and ``report.md`` under ``out_dir``; return the report path.

    Prediction paths in the records are relative to ``base_dir`` (default ``out_dir``). With
    ``plots=False`` the images are linked but not drawn (the caller has written them with
    :func:`~iclvsft.compare.plots.plot_task` at :func:`~iclvsft.compare.plots.plot_filename`).
    ``circuit_section``: the Markdown lines of the circuit-shift analysis
    (:func:`~iclvsft.compare.circuit_section.run_circuit_analyses`), the report's last section.
    """
    out = Path(out_dir)
    base = Path(base_dir) if base_dir is not None else out
    meta_tasks = meta.get("tasks") or []
    if isinstance(meta_tasks, str):
        meta_tasks = [t for t in meta_tasks.split(",") if t]
    tasks = ordered([str(r["task"]) for r in settings] + list(meta_tasks), list(meta_tasks))
    meta_models = meta.get("model") or []
    meta_models = [str(m) for m in (meta_models if isinstance(meta_models, (list, tuple)) else [meta_models])]
    models = ordered([str(r["model"]) for r in settings], meta_models)  # a run's models in its order
    if not models:
        models = meta_models
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

    comparisons = {(m, t, s): compare(settings, t, m, s, base) for m in models for t in tasks for s in VERDICT_SPLITS}

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
        k = knob(c.icl_choice) if c.icl_choice else "–"
        n = _n_star(c.ft_choice)
        disc = f"{c.mcnemar.b01} / {c.mcnemar.b10}" if c.mcnemar else "–"
        p = format_p(c.mcnemar.p_value) if c.mcnemar else "–"
        lines.append(
            f"| {m} | `{t}` | {s} | {k} | {_acc_ci(c.icl)} | {n} | {_acc_ci(c.ft)} | {disc} | {p} | {c.verdict} |"
        )
    lines.append("")
    lines += _pattern_use_lines(comparisons)
    lines += _constant_answer_lines(settings, tasks, base)
    if several:
        if plots:
            plot_models(settings, tasks, models, out / MODELS_PLOT, meta.get("model_parameters") or {})
        lines += [
            "## Across models",
            "",
            (
                "ICL at k* and FT at n* (each chosen on validation for its model) against model size, per task, "
                f"on {' and '.join(f'`{s}`' for s in VERDICT_SPLITS)}"
                + (f", and the shortcut rate on `{PATTERN_SPLIT}`" if any(map(has_pattern_use, settings)) else "")
                + "."
            ),
            "",
            f"![ICL at k* and FT at n* against model size]({MODELS_PLOT})",
            "",
        ]

    for m in models:
        for t in tasks:
            lines += [f"## `{t}`" + (f" — {m}" if several else ""), ""]
            if not any(r["task"] == t and r["model"] == m for r in settings):
                lines += ["No results for this task.", ""]
                continue
            rel = plot_filename(t, m, several)
            if plots:
                plot_task(settings, t, m, out / rel)
            lines += [f"![{t}: accuracy vs shots (ICL) and vs fine-tuning samples (FT)]({rel})", ""]
            for cond, symbol in (("icl", "k*"), ("ft", "n*")):
                choice = select_best(settings, cond, t, m)
                name = CONDITION_NAMES[cond]
                if choice is None:
                    why = "no results" if not has_condition(settings, cond, t, m) else "no validation cells"
                    lines.append(f"- {name}: {why} for this task, so it is not compared.")
                else:
                    recipe = f" with the `{choice['recipe']}` recipe" if choice.get("recipe") else ""
                    lines.append(
                        f"- {name}: {symbol}={knob(choice)}{recipe} chosen on validation "
                        f"(validation accuracy {_acc_ci(choice)})."
                    )
            lines.append("")
            for s in VERDICT_SPLITS:
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
                if s == PATTERN_SPLIT and c.shortcut_verdict:
                    lines.append(
                        f"Pattern use: {c.shortcut_verdict}; shortcut rate ICL {_rate_ci(c.icl, 'shortcut')} vs FT "
                        f"{_rate_ci(c.ft, 'shortcut')}, invalid rate ICL {_rate_ci(c.icl, 'invalid')} vs FT "
                        f"{_rate_ci(c.ft, 'invalid')}"
                        + (
                            f"; {c.shortcut_test.b01} items where ICL, {c.shortcut_test.b10} where FT used it more."
                            if c.shortcut_test
                            else "."
                        )
                    )
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
            k = knob(c.icl_choice) if c.icl_choice else "–"
            n = _n_star(c.ft_choice)
            lines.append(
                f"| {m} | `{t}` | {k} | {_tokens(icl_tok)} | {n} | {_tokens(train_tok)} | "
                f"{_tokens(ft_eval_tok)} | {_tokens(total)} |"
            )
    lines.append("")
    text = "\n".join(lines)
    if circuit_section:  # after a blank line, ending in one newline
        text = text.rstrip("\n") + "\n\n" + "\n".join(circuit_section).rstrip("\n") + "\n"
    path = out / "report.md"
    atomic_write_text(path, text)
    return path
