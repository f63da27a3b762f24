"""The Markdown of a circuit analysis: verdicts per component type, shift table, check, heatmaps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iclvsft_tasks.atomic import atomic_write_text

TYPES = (("heads", "attention heads"), ("mlps", "MLP layers"))
MEASURE_NAMES = {"l1": "L1 distance", "jaccard": "1 − Jaccard of top-k"}


def _ci(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "–"
    low, high = entry["ci"]
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def _signed_ci(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "–"
    low, high = entry["ci"]
    return f"{entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per component type: does ICL's shift (L1) exceed FT's?"""
    lines = []
    for kind, name in TYPES:
        block = result["shift"][kind]
        diff = (block.get("difference") or {}).get("l1")
        conds = block["conditions"]
        if diff is None:
            have = ", ".join(f"{c.upper()} shift {_ci(conds[c]['l1'])}" for c in ("icl", "ft") if c in conds)
            lines.append(
                f"- **{name}**: not compared ({'; '.join(result.get('notes', [])) or 'a condition is missing'})"
                + (f"; {have}" if have else "")
                + "."
            )
            continue
        lines.append(
            f"- **{name}**: {diff['verdict']} — L1 shift from the 0-shot base map: ICL {_ci(conds['icl']['l1'])}, "
            f"FT {_ci(conds['ft']['l1'])}; ICL − FT {_signed_ci(diff)}."
        )
    return lines


def render_section(result: Mapping[str, Any], link_prefix: str = "", level: int = 2) -> list[str]:
    """Markdown lines for one analysis; image links are ``link_prefix`` + file name."""
    s = result["settings"]
    h = "#" * level
    conds = result["conditions"]
    level_pct = round(100 * s["level"])
    lines = [f"{h} Verdict", ""]
    lines += verdict_lines(result)
    lines += [
        "",
        (
            f"Each component's score on a pair is the change of M = logit[shortcut's first token] − "
            f"logit[corrupt gold's first token] when the corrupt run gets the clean activation "
            f"({result['method']} patching); a condition's map is the mean |score| over the "
            f"{len(result['pairs'])} pairs, normalized to sum 1 per component type. Shift = distance from "
            f"the base model's 0-shot map; {level_pct}% CIs from {s['bootstrap']} bootstrap resamples of the "
            f"pairs. ICL's shift exceeds FT's when the CI of their difference lies above 0."
        ),
        "",
    ]
    lines += [
        f"{h} Shift",
        "",
        "| components | measure | top-k | ICL shift | FT shift | ICL − FT | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, name in TYPES:
        block = result["shift"][kind]
        for measure in ("l1", "jaccard"):
            icl = block["conditions"].get("icl", {}).get(measure)
            ft = block["conditions"].get("ft", {}).get(measure)
            diff = (block.get("difference") or {}).get(measure)
            top = f"{block['top_k']} of {block['components']}" if measure == "jaccard" else "–"
            lines.append(
                f"| {name} | {MEASURE_NAMES[measure]} | {top} | {_ci(icl)} | {_ci(ft)} | {_signed_ci(diff)} | "
                f"{diff['verdict'] if diff else '–'} |"
            )
    lines += [
        "",
        f"{h} Conditions",
        "",
        (
            "| condition | model | shots | mean M(clean) | mean M(corrupt) | "
            "attribution vs activation (Spearman, heads / MLPs) | s per pair |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in conds.items():
        check = c.get("check") or {}
        rho = check.get("spearman") or {}
        agree = (
            "–"
            if not check.get("pairs")
            else f"{_num(rho.get('heads'))} / {_num(rho.get('mlps'))} on {check['pairs']} pairs"
        )
        timing = c["timing"]
        per_pair = f"{timing['attribution_s_per_pair']:.2f} (attribution)"
        if timing.get("activation_s_per_pair") is not None:
            per_pair += f", {timing['activation_s_per_pair']:.2f} (activation)"
        lines.append(
            f"| {name} | {c['model']} | {c['shots']} | {_mean(c['metric_clean']):.3f} | "
            f"{_mean(c['metric_corrupt']):.3f} | {agree} | {per_pair} |"
        )
    lines += ["", f"{h} Heatmaps", ""]
    for key, caption in result["files"]["heatmaps"].items():
        lines += [f"![{caption}]({link_prefix}{key})", ""]
    return lines


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def write_report(result: Mapping[str, Any], out: str | os.PathLike[str]) -> Path:
    """``report.md`` of one analysis under ``out``."""
    s = result["settings"]
    ft = result.get("ft_checkpoint")
    lines = [
        f"# Circuit shift: `{s['task']}` — {result['model']}",
        "",
        f"- **ICL**: the base model at {s['shots']} shots (fixed demonstrations, draw {s['draw']})",
        f"- **FT**: {ft['path'] + ' (' + ft['kind'] + ')' if ft else 'none given'}, at 0 shots",
        f"- **pairs**: {len(result['pairs'])} (clean from test, corrupt from test_broken, seed {s['seed']})",
        f"- **method**: {result['method']} patching; dtype {s['dtype']}; device {s['device']}",
        f"- **wall time**: {result['timing']['wall_s']:.0f} s",
        "",
    ]
    for note in result.get("notes", []):
        lines.append(f"Note: {note}.")
    if result.get("notes"):
        lines.append("")
    lines += render_section(result)
    path = Path(out) / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
