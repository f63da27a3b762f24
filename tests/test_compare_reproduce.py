"""Issue 13's reproducibility of ``iclvsft compare``, on a tiny random Llama: every cell's ``reproduce``
command (``iclvsft-eval``) recomputes its accuracy and per-item predictions, and a rerun of a published
run folder (cells, results, report and circuit results, no ``ft/`` checkpoints) evaluates nothing,
trains nothing and writes the same results and report."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from iclvsft.compare import run as compare_run
from iclvsft.compare.config import Experiment
from iclvsft.compare.reproduce import REPRODUCE_DIR, stored_cell_command
from iclvsft_tasks.errors import IclvsftError


def _experiment(model: Path, out: Path) -> Experiment:
    return Experiment(
        model=str(model),
        tasks=["parity_pattern"],
        shots=[0, 3],
        draws=2,
        ft_samples=[8],  # one milestone: n* = 8, so the circuit analysis needs the fine-tuned model
        test_size=40,
        test_broken_size=40,
        validation_size=6,
        train_size=60,
        out=str(out),
        jobs=1,
        circuits=True,
        circuit_items=3,
        train_args=["--learning_rate", "3e-3"],
    )


def _forbid_work(monkeypatch, what: str):
    """Make evaluating a cell, training, planning a fine-tune or scoring a circuit condition fail;
    returns the failing stand-in, for the caller to forbid more."""
    from iclvsft.circuits import run as circuits_run

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{what} evaluated, trained or scored something")

    for module, name in [
        (compare_run, "evaluate_cell"),
        (compare_run, "ensure_trained"),
        (compare_run, "plan_training"),
        (circuits_run, "score_condition"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    return forbidden


def _stop_after_the_cells(monkeypatch, exp: Experiment, *patches: tuple[object, str, object]) -> None:
    """Run ``exp`` until its cells are in and stop it there, before results.json (a session that ends
    after the last cell), with ``patches`` (module, name, value) applied meanwhile;
    the caller deletes ``ft/``, as a fresh machine would."""
    from iclvsft.compare import results

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    for module, name, value in patches:
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(results, "write_results", stop)
    with pytest.raises(KeyboardInterrupt):
        compare_run.run_compare(exp)
    monkeypatch.undo()
    assert not (Path(exp.out) / "results.json").exists()


@pytest.fixture(scope="module")
def published(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    meta = compare_run.run_compare(_experiment(tiny_llama, out))
    return out, meta


def _logged(folder: Path) -> tuple[float, list[dict]]:
    """lm-eval's accuracy and its logged samples (by doc id) under ``--output_path folder``."""
    (results,) = folder.rglob("results_*.json")
    (samples,) = folder.rglob("samples_*.jsonl")
    data = json.loads(results.read_text())
    (task,) = data["results"]
    rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    return data["results"][task]["exact_match,extract"], rows


@pytest.mark.parametrize("condition", ["icl", "ft"])
def test_a_cells_reproduce_command_gives_its_accuracy_and_predictions(published, condition, monkeypatch):
    from iclvsft_tasks import eval_cli

    out, _ = published
    records = json.loads((out / "results.json").read_text())
    if condition == "icl":  # fixed demonstrations, the second draw
        cell = next(r for r in records if r["condition"] == "icl" and r["shots"] == 3 and r["draw"] == 2)
    else:
        cell = next(r for r in records if r["condition"] == "ft" and r["split"] == "test")
    argv = shlex.split(cell["reproduce"])
    assert argv[0] == "iclvsft-eval" and str(out) not in cell["reproduce"]  # run-folder paths are relative
    if condition == "ft":
        assert f"peft={cell['checkpoint']}" in cell["reproduce"]
    monkeypatch.chdir(out)
    assert eval_cli.main(argv[1:]) == 0
    accuracy, samples = _logged(out / REPRODUCE_DIR / cell["key"])
    rows = [json.loads(line) for line in (out / cell["predictions"]).read_text().splitlines()]
    assert accuracy == cell["accuracy"]
    assert [(s["doc"]["id"], s["filtered_resps"][0], s["resps"][0][0]) for s in samples] == [
        (r["id"], r["prediction"], r["raw"]) for r in rows
    ]


def test_the_stored_cell_command_is_the_results_one_and_errors_are_one_line(published, tiny_llama):
    out, _ = published
    exp = _experiment(tiny_llama, out)
    for record in json.loads((out / "results.json").read_text()):
        assert stored_cell_command(exp, record["key"]) == record["reproduce"]
    with pytest.raises(IclvsftError, match=r"no cell nope in .*results\.json"):
        stored_cell_command(exp, "nope")
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("predictions") + 1] == "reproduce"


def test_a_rerun_without_the_checkpoints_evaluates_nothing_and_writes_the_same(published, tiny_llama, monkeypatch):
    """The published folder (copied elsewhere, without ft/): nothing evaluated, trained or analysed again."""
    from iclvsft.circuits import run as circuits_run

    out, first = published
    copy = out.parent / "published"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("ft", REPRODUCE_DIR, ".iclvsft.lock"))
    cells = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy / "cells").iterdir()}

    forbidden = _forbid_work(monkeypatch, "a rerun of a published run")
    monkeypatch.setattr(circuits_run, "load_causal_lm", forbidden)
    second = compare_run.run_compare(_experiment(tiny_llama, copy))
    assert (copy / "results.json").read_text() == (out / "results.json").read_text()
    assert (copy / "results.csv").read_text() == (out / "results.csv").read_text()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy / "cells").iterdir()} == cells
    assert not (copy / "ft").exists()
    assert first["circuits"]["parity_pattern"]["status"] == "done"  # the analysis ran on the fine-tuned model
    assert second["circuits"] == first["circuits"]

    def stable(report: str) -> list[str]:  # the run's own wall time (and date, on a run past midnight)
        return [line for line in report.splitlines() if not line.startswith(("- **wall time", "- **date"))]

    assert stable((copy / "report.md").read_text()) == stable((out / "report.md").read_text())
    assert "ft/" in (copy / "report.md").read_text() and str(out) not in (copy / "report.md").read_text()


def test_compare_reproduce_prints_a_stored_cells_command(published, tiny_llama):
    from test_compare import _compare

    out, _ = published
    record = json.loads((out / "results.json").read_text())[0]
    flags = ["--model", str(tiny_llama), "--tasks", "parity_pattern", "--shots", "0,3", "--draws", "2"]
    flags += ["--ft-samples", "8", "--test-size", "40", "--validation-size", "6", "--train-size", "60"]
    flags += ["--jobs", "1", "--out", str(out), "--learning_rate", "3e-3"]
    proc = _compare([*flags, "--reproduce", record["key"]], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"cd {shlex.quote(str(out))} && {record['reproduce']}"
    proc = _compare([*flags, "--reproduce", "nope"], timeout=300)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "no cell nope" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_circuit_analysis_is_stored_while_the_fine_tune_is_on_disk(tiny_llama, tmp_path, monkeypatch, jobs):
    """A run stopped after its cells, before its end (the study across sessions on machines whose ft/
    does not survive): the analysis at n* was stored as the fine-tune's cells finished, so the resumed
    run, with ft/ gone, reuses it instead of analysing without the fine-tuned model."""
    import dataclasses

    out = tmp_path / "run"
    exp = dataclasses.replace(_experiment(tiny_llama, out), jobs=jobs)
    _stop_after_the_cells(monkeypatch, exp)
    stored = json.loads((out / "circuits" / "parity_pattern" / "circuits.json").read_text())
    assert stored["settings"]["ft_checkpoint"].endswith("samples-8")
    shutil.rmtree(out / "ft")

    _forbid_work(monkeypatch, "the resumed run")
    meta = compare_run.run_compare(exp)
    assert meta["circuits"]["parity_pattern"]["status"] == "done"
    assert "not on disk" not in (out / "report.md").read_text() and "FT n*=8" in (out / "report.md").read_text()


def test_a_lost_fine_tune_is_trained_again_for_its_circuit_analysis(tiny_llama, tmp_path, monkeypatch, capsys):
    """A run whose machine lost ft/ before the analysis at n* was stored (the cells are in, the analysis
    is not): the resumed run evaluates no cell, trains that fine-tune again from the same data and seed,
    and analyses with it instead of without the fine-tuned model."""
    from iclvsft.compare import circuit_section

    out = tmp_path / "run"
    exp = _experiment(tiny_llama, out)
    # stopped before the analysis that runs as the fine-tune finishes
    _stop_after_the_cells(monkeypatch, exp, (circuit_section, "analyse_task_if_ready", lambda *a, **k: None))
    assert not (out / "circuits" / "parity_pattern" / "circuits.json").exists()
    shutil.rmtree(out / "ft")
    capsys.readouterr()

    def forbidden(*args, **kwargs):
        raise AssertionError("the resumed run evaluated a cell")

    monkeypatch.setattr(compare_run, "evaluate_cell", forbidden)
    meta = compare_run.run_compare(exp)
    assert "needs FT n*=8" in capsys.readouterr().err
    assert (out / "ft").is_dir() and meta["circuits"]["parity_pattern"]["status"] == "done"
    stored = json.loads((out / "circuits" / "parity_pattern" / "circuits.json").read_text())
    assert stored["settings"]["ft_checkpoint"].endswith("samples-8")
    assert "not on disk" not in (out / "report.md").read_text() and "FT n*=8" in (out / "report.md").read_text()


def test_a_lost_fine_tune_is_not_trained_again_when_too_few_pairs_match(tiny_llama, tmp_path, monkeypatch):
    """The same loss, for a task whose analysis cannot run (too few clean/corrupt pairs match, as for
    code_pattern's numeric answers): nothing is trained for it."""
    import dataclasses

    out = tmp_path / "run"
    exp = dataclasses.replace(_experiment(tiny_llama, out), circuit_items=500)  # more pairs than 40 x 40 items hold
    _stop_after_the_cells(monkeypatch, exp)
    shutil.rmtree(out / "ft")

    _forbid_work(monkeypatch, "the resumed run")
    meta = compare_run.run_compare(exp)
    assert meta["circuits"]["parity_pattern"]["status"] != "done" and not (out / "ft").exists()


def test_a_failed_early_circuit_analysis_stops_no_cell(tiny_llama, tmp_path, monkeypatch, capsys):
    """An unexpected error in the analysis run as the fine-tune finishes is one line; the run goes on and
    its end analyses the task again."""
    import iclvsft.circuits

    real, calls = iclvsft.circuits.run_circuits, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(iclvsft.circuits, "run_circuits", fails_once)
    meta = compare_run.run_compare(_experiment(tiny_llama, tmp_path / "run"))
    assert "the circuit analysis of parity_pattern failed (RuntimeError: boom)" in capsys.readouterr().err
    assert len(calls) == 2 and meta["circuits"]["parity_pattern"]["status"] == "done"
