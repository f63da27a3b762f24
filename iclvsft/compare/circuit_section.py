"""The report's circuit-shift section: ``iclvsft circuits`` on each task at the validation-chosen k* and n*.

Runs before ``report.md`` is written, which then ends with the section's lines.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from iclvsft.compare.config import Experiment
from iclvsft.compare.records import Record, Settings, select_best
from iclvsft_tasks.errors import IclvsftError


def run_circuit_analyses(
    exp: Experiment, settings: Settings, out: Path, label: str, model: str | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The circuit-shift analysis of each task at the validation-chosen k* and n* of ``model`` (labelled
    ``label`` in the records; default: the experiment's first model).

    Writes ``<out>/circuits/<task>/`` (reused when its settings have not changed) and returns the
    report section's lines and, per task, the result file or why the analysis did not run. A
    missing condition (k* = 0, no FT result) or too few pairs is said in the section, not raised.
    """
    lines = [
        "## Circuit shift",
        "",
        (
            "Which attention heads and MLP layers the demonstrations (ICL at k*) and the fine-tuning (FT at n*) "
            "change, measured by patching pattern items into matched pattern-broken items (`iclvsft circuits`; "
            f"{exp.circuit_items} pairs from `test`/`test_broken`, the fixed demonstrations of draw 1). The shift is "
            "the distance of each condition's importance map from the base model's 0-shot map."
        ),
        "",
    ]
    summary: dict[str, Any] = {}
    for task in exp.tasks:
        task_lines, summary[task] = analyse_task(exp, settings, out, label, task, model)
        lines += task_lines
    return lines, summary


def analyse_task_if_ready(
    exp: Experiment, settings: Settings, out: Path, label: str, task: str, model: str | None = None
) -> None:
    """``task``'s analysis now, once its cells are in and its FT milestone n* is on disk.

    ``iclvsft compare`` calls this as each fine-tune's cells finish, so that the analysis is stored
    while the checkpoint exists: a run resumed where ``ft/`` is gone (a fresh machine with the
    published cells) then reuses it at the end instead of analysing without the fine-tuned model.
    Without n* on disk it does nothing: the run's end trains it again first. An unexpected failure
    is said in one line and left to the run's end, so that it cannot stop the cells still to run.
    """
    ft = select_best(settings, "ft", task, label)
    if ft is not None and ft.get("checkpoint") and (out / str(ft["checkpoint"])).is_dir():
        try:
            _, summary = analyse_task(exp, settings, out, label, task, model)
        except Exception as exc:  # the cells come first; the end of the run tries again
            print(
                f"iclvsft compare: the circuit analysis of {task} failed ({type(exc).__name__}: {exc}); "
                "it is tried again at the end of the run",
                file=sys.stderr,
            )
            return
        if summary["status"] == "failed":  # e.g. too few pairs match: the report's section says it too
            print(f"iclvsft compare: the circuit analysis of {task} cannot run: {summary['error']}", file=sys.stderr)


def _config(
    exp: Experiment, settings: Settings, out: Path, label: str, task: str, model: str | None
) -> tuple[Any, Record | None, Record | None, str | None]:
    """``task``'s analysis settings at the validation-chosen k* and n*, with the ICL and FT records
    chosen and n*'s checkpoint relative to ``out`` (None without an FT result)."""
    from iclvsft.circuits import CircuitsConfig
    from iclvsft_train.checkpoints import DTYPES as CIRCUIT_DTYPES

    icl = select_best(settings, "icl", task, label)
    ft = select_best(settings, "ft", task, label)
    rel = str(ft["checkpoint"]) if ft and ft.get("checkpoint") else None
    config = CircuitsConfig(
        model=model or exp.models[0],
        task=task,
        shots=int(icl["shots"]) if icl else 0,
        ft_checkpoint=str(out / rel) if rel else None,
        items=exp.circuit_items,
        out=str(out / "circuits" / task),
        dtype=exp.dtype if exp.dtype in CIRCUIT_DTYPES else "float32",
        device=exp.device,
        data=exp.data,
        draw=1,
    )
    return config, icl, ft, rel


def missing_checkpoint(
    exp: Experiment, settings: Settings, out: Path, label: str, task: str, model: str | None = None
) -> Record | None:
    """The FT record chosen at n* when ``task``'s analysis is not stored and needs its checkpoint,
    which is not on disk (a run resumed on a machine where ``ft/`` is gone); else None. Also None
    when too few pairs match for the analysis to run at all (said in the section): retraining a
    fine-tune for an analysis that cannot run would cost hours for nothing."""
    from iclvsft.circuits.run import find_pairs, stored_result

    config, _, ft, rel = _config(exp, settings, out, label, task, model)
    if rel is None or Path(config.ft_checkpoint).is_dir() or stored_result(config, Path(rel).parts) is not None:
        return None
    try:
        find_pairs(config)
    except IclvsftError:
        return None
    return ft


def analyse_task(
    exp: Experiment, settings: Settings, out: Path, label: str, task: str, model: str | None = None
) -> tuple[list[str], dict[str, Any]]:
    """One task's part of :func:`run_circuit_analyses`: its report lines and its summary entry."""
    # Lazy: only a run with circuits on needs the circuits package.
    from iclvsft.circuits import run_circuits
    from iclvsft.circuits.report import render_section
    from iclvsft.circuits.run import stored_result

    config, icl, ft, rel = _config(exp, settings, out, label, task, model)
    shots, checkpoint = config.shots, config.ft_checkpoint
    # A stored analysis of the same inputs is reused without loading anything, so a published run
    # folder (cells and circuit results, no ft/ checkpoints) reruns without the fine-tuned model.
    reused = stored_result(config, Path(rel).parts) if rel else None
    notes = []
    if icl is None:
        notes.append("there is no ICL result")
    elif shots == 0:
        notes.append("k* = 0 (ICL's best validation setting shows no demonstrations), so there is no ICL shift")
    if ft is None:
        notes.append("there is no FT result")
    elif reused is None and (not checkpoint or not Path(checkpoint).is_dir()):
        notes.append(f"the FT milestone n*={ft['ft_samples']} is not on disk ({rel})")
        checkpoint = None
    lines = [f"### `{task}`", ""]
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    if not shots and checkpoint is None:
        return lines + ["Not analysed.", ""], {"status": "not run", "notes": notes}
    try:
        result = reused or run_circuits(dataclasses.replace(config, ft_checkpoint=checkpoint), reuse=True)
    except IclvsftError as exc:
        return lines + [f"Not analysed: {exc}.", ""], {"status": "failed", "error": str(exc), "notes": notes}
    n = f", FT n*={ft['ft_samples']} (`{rel}`)" if checkpoint else ""
    lines += [
        (
            f"ICL k*={shots}{n}, chosen on validation. Files: `circuits/{task}/` "
            f"([report](circuits/{task}/report.md), `circuits.json`)."
        ),
        "",
    ]
    lines += render_section(result, link_prefix=f"circuits/{task}/", level=4)
    return lines, {
        "status": "done",
        "result": f"circuits/{task}/circuits.json",  # relative to --out, as every path the run stores
        "verdict": result["verdict"],
        "notes": notes,
    }
