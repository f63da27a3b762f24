"""Selection on validation, results files, plots and the Markdown report, on synthetic cells."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from iclvsft.compare.markdown import write_report
from iclvsft.compare.plots import plot_task
from iclvsft.compare.records import Settings, aggregate_draws, select_best
from iclvsft.compare.results import write_results
from iclvsft.compare.stats import mcnemar_exact, wilson_interval
from iclvsft.compare.summary import summary_table
from iclvsft.compare.verdicts import compare

MODEL = "tiny-model"
META = {
    "model": MODEL,
    "tasks": ["parity_pattern", "boolean_pattern"],
    "seed": 0,
    "split_sizes": {"test": 40, "test_broken": 40, "validation": 20},
    "split_fingerprints": {"parity_pattern": {"test": "aaa", "test_broken": "bbb", "validation": "ccc"}},
    "machine": "test box",
    "date": "2025-01-01",
    "command": ["iclvsft", "compare", "--seed", "0"],
    "wall_time_s": 12.5,
}


def cell(
    out: Path, condition: str, task: str, split: str, knob: int, outcomes: list[bool], draw: int = 0, **extra
) -> dict:
    """One record and its predictions file (ids shared across cells of a split, as in a real run)."""
    shots, samples = (knob, 0) if condition == "icl" else (0, knob)
    key = f"{MODEL}/{task}/{condition}/{split}/k{shots}/n{samples}/d{draw}"
    rel = f"predictions/{key.replace('/', '__')}.jsonl"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps(
                {"id": f"{task}-{split}-{i}", "answer": "odd", "prediction": "odd" if ok else "even", "correct": ok}
            )
            + "\n"
            for i, ok in enumerate(outcomes)
        )
    )
    correct, n = sum(outcomes), len(outcomes)
    lo, hi = wilson_interval(correct, n)
    rec = {
        "key": key,
        "condition": condition,
        "model": MODEL,
        "task": task,
        "split": split,
        "shots": shots,
        "ft_samples": samples,
        "draw": draw,
        "seed": 0,
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "ci_low": lo,
        "ci_high": hi,
        "fingerprint": f"fp-{split}",
        "prompt_tokens": n * (30 + 25 * shots),
        "train_tokens": 35 * samples,
        "wall_time_s": 1.0,
        "predictions": rel,
    }
    rec.update(extra)
    return rec


def outcomes(n_right: int, n: int, first: bool = True) -> list[bool]:
    """n_right correct answers, packed at the start (first) or the end of the split."""
    return [i < n_right for i in range(n)] if first else [i >= n - n_right for i in range(n)]


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, list[dict]]:
    """parity: k=2 best on validation but k=8 best on test; ICL wins test_broken, tie on test.

    boolean: FT wins test_broken; ICL and FT even on test.
    """
    out, recs, t = tmp_path, [], "parity_pattern"
    val = {0: 10, 1: 12, 2: 17, 8: 15}
    test = {0: 20, 1: 24, 2: 30, 8: 38}
    broken = {0: 5, 1: 10, 2: 36, 8: 30}
    for k in val:
        recs.append(cell(out, "icl", t, "validation", k, outcomes(val[k], 20)))
        recs.append(cell(out, "icl", t, "test", k, outcomes(test[k], 40)))
        recs.append(cell(out, "icl", t, "test_broken", k, outcomes(broken[k], 40)))
    for n, (v, te, br) in {100: (11, 25, 4), 400: (16, 31, 6), 1600: (16, 35, 8)}.items():  # 400/1600 tie
        recs.append(cell(out, "ft", t, "validation", n, outcomes(v, 20)))
        recs.append(cell(out, "ft", t, "test", n, outcomes(te, 40)))
        recs.append(cell(out, "ft", t, "test_broken", n, outcomes(br, 40)))
    t = "boolean_pattern"
    for k, (v, te, br) in {0: (12, 20, 10), 4: (15, 30, 8)}.items():
        recs.append(cell(out, "icl", t, "validation", k, outcomes(v, 20)))
        recs.append(cell(out, "icl", t, "test", k, outcomes(te, 40)))
        recs.append(cell(out, "icl", t, "test_broken", k, outcomes(br, 40)))
    for n, (v, te, br) in {100: (14, 30, 30), 400: (13, 33, 35)}.items():
        recs.append(cell(out, "ft", t, "validation", n, outcomes(v, 20)))
        recs.append(cell(out, "ft", t, "test", n, outcomes(te, 40, first=False)))
        recs.append(cell(out, "ft", t, "test_broken", n, outcomes(br, 40)))
    return out, recs


def test_selection_uses_validation_never_test(run_dir):
    _, recs = run_dir
    best = select_best(Settings.aggregate(recs), "icl", "parity_pattern", MODEL)
    assert best["split"] == "validation" and best["shots"] == 2  # k=8 is best on test, k=2 on validation
    ft = select_best(Settings.aggregate(recs), "ft", "parity_pattern", MODEL)
    assert ft["split"] == "validation" and ft["ft_samples"] == 400  # tie with 1600: the cheaper one
    assert select_best(Settings.aggregate(recs), "icl", "code_pattern", MODEL) is None
    only_test = [r for r in recs if r["split"] != "validation"]
    assert select_best(Settings.aggregate(only_test), "icl", "parity_pattern", MODEL) is None


def test_ties_go_to_fewer_shots(tmp_path):
    recs = [cell(tmp_path, "icl", "parity_pattern", "validation", k, outcomes(14, 20)) for k in (8, 1, 4)]
    assert select_best(Settings.aggregate(recs), "icl", "parity_pattern", MODEL)["shots"] == 1


def test_results_files_are_deterministic(run_dir, tmp_path):
    _, recs = run_dir
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    a, b = tmp_path / "a", tmp_path / "b"
    write_results(recs, a)
    write_results(shuffled, b)
    for name in ("results.json", "results.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    rows = json.loads((a / "results.json").read_text())
    assert len(rows) == len(recs)
    order = [(r["model"], r["task"], r["condition"], r["split"], r["shots"], r["ft_samples"]) for r in rows]
    assert order[0] == (MODEL, "boolean_pattern", "ft", "validation", 0, 100)
    csv_lines = (a / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("key,model,task,condition,split,shots,ft_samples")
    assert len(csv_lines) == len(recs) + 1
    assert not list(a.glob(".*tmp"))


def test_plot_is_a_readable_png(run_dir, tmp_path):
    from matplotlib.image import imread

    _, recs = run_dir
    path = plot_task(Settings.aggregate(recs), "parity_pattern", MODEL, tmp_path / "plots" / "parity_pattern.png")
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 0.01  # something was drawn
    assert not list(path.parent.glob(".*tmp"))


def test_compare_pairs_items_and_states_verdicts(run_dir):
    out, recs = run_dir
    broken = compare(Settings.aggregate(recs), "parity_pattern", MODEL, "test_broken", out)
    assert (broken.icl["shots"], broken.ft["ft_samples"]) == (2, 400)
    assert (broken.mcnemar.b01, broken.mcnemar.b10, broken.mcnemar.n) == (30, 0, 40)
    assert broken.winner == "icl" and broken.verdict.startswith("ICL (k*=2) beat FT (n*=400)")
    test = compare(Settings.aggregate(recs), "parity_pattern", MODEL, "test", out)
    assert test.winner is None and test.verdict.startswith("no significant difference (p=")
    fb = compare(Settings.aggregate(recs), "boolean_pattern", MODEL, "test_broken", out)
    assert fb.winner == "ft" and fb.verdict.startswith("FT (n*=100) beat ICL (k*=4)")
    # The paired test is not the unpaired one: same accuracies (30/40), opposite items.
    even = compare(Settings.aggregate(recs), "boolean_pattern", MODEL, "test", out)
    assert even.icl["correct"] == even.ft["correct"] == 30
    assert (even.mcnemar.b01, even.mcnemar.b10) == (10, 10) and even.mcnemar.p_value == 1.0


def test_report_has_verdicts_p_values_tokens_and_plots(run_dir):
    out, recs = run_dir
    path = write_report(Settings.aggregate(recs), out, META)
    text = path.read_text()
    assert "![parity_pattern" in text and "](plots/parity_pattern.png)" in text
    assert "](plots/boolean_pattern.png)" in text
    assert (out / "plots" / "parity_pattern.png").stat().st_size > 1000
    assert "ICL (k*=2) beat FT (n*=400)" in text and "FT (n*=100) beat ICL (k*=4)" in text
    assert "no significant difference (p=" in text
    p = mcnemar_exact(outcomes(36, 40), outcomes(6, 40)).p_value  # parity test_broken, k*=2 vs n*=400
    assert f"p={p:.1e}" in text or f"p={p:.4f}" in text
    assert "never on test" in text and "`iclvsft compare --seed 0`" in text and "test box" in text
    assert "| `parity_pattern` | `aaa` | `bbb` | `ccc` |" not in text  # fingerprint columns are ordered by split
    assert "| `parity_pattern` | `ccc` | `aaa` | `bbb` |" in text
    # Tokens: ICL at k*=2 on test (40 items x 80), FT training tokens at n*=400 plus its 0-shot evaluation.
    assert "| 2 | 3,200 | 400 | 14,000 | 1,200 | 15,200 |" in text
    assert not list(out.rglob(".*tmp"))


def test_missing_condition_and_predictions_degrade_gracefully(run_dir):
    out, recs = run_dir
    icl_only = [r for r in recs if not (r["task"] == "boolean_pattern" and r["condition"] == "ft")]
    (out / icl_only[0]["predictions"]).unlink()  # a parity ICL k=0 file: never the chosen cell
    parity_ft_file = next(
        r
        for r in recs
        if r["task"] == "parity_pattern" and r["condition"] == "ft" and r["split"] == "test" and r["ft_samples"] == 400
    )["predictions"]
    (out / parity_ft_file).unlink()
    meta = dict(META, tasks=["parity_pattern", "boolean_pattern", "code_pattern"])
    text = write_report(Settings.aggregate(icl_only), out, meta).read_text()
    assert "not compared: no FT results" in text
    assert "FT: no results for this task" in text
    assert "not tested (predictions file" in text  # parity test: FT file gone
    assert "ICL (k*=2) beat FT (n*=400)" in text  # parity test_broken still tested
    assert "## `code_pattern`" in text and "No results for this task." in text
    assert (out / "plots" / "boolean_pattern.png").is_file()
    assert summary_table(Settings.aggregate(icl_only))
    assert summary_table(Settings.aggregate([])) == "no results"


def test_summary_table_marks_the_validation_choices(run_dir):
    _, recs = run_dir
    table = summary_table(Settings.aggregate(recs))
    lines = table.splitlines()
    assert lines[0].startswith(f"model: {MODEL}")
    assert "k=0" in lines[1] and "n=1600" in lines[1]
    val = next(line for line in lines if line.startswith("parity_pattern") and "validation" in line)
    assert "0.850*" in val and "0.800*" in val
    assert len({len(line) for line in lines[1:]}) >= 1
    print(table)


def test_report_can_link_plots_drawn_elsewhere(run_dir, tmp_path):
    out, recs = run_dir
    report_dir = tmp_path / "elsewhere"
    text = write_report(Settings.aggregate(recs), report_dir, {}, base_dir=out, plots=False).read_text()
    assert "](plots/parity_pattern.png)" in text and not (report_dir / "plots").exists()
    assert "ICL (k*=2) beat FT (n*=400)" in text  # predictions resolved against base_dir


# --- fixed demonstration draws ----------------------------------------------------------------------


@pytest.fixture
def draws_dir(tmp_path) -> tuple[Path, list[dict]]:
    """parity with 3 draws per k: k=4 has the best single validation draw, k=2 the best mean."""
    out, recs, t = tmp_path, [], "parity_pattern"
    val = {2: (15, 15, 15), 4: (19, 9, 9)}
    test = {2: (30, 34, 38), 4: (20, 20, 20)}
    for k in val:
        for d in range(3):
            recs.append(cell(out, "icl", t, "validation", k, outcomes(val[k][d], 20), draw=d + 1))
            recs.append(cell(out, "icl", t, "test", k, outcomes(test[k][d], 40), draw=d + 1))
    recs.append(cell(out, "ft", t, "validation", 100, outcomes(10, 20)))
    recs.append(cell(out, "ft", t, "test", 100, outcomes(20, 40)))
    return out, recs


def test_draws_are_aggregated_before_choosing_k(draws_dir):
    _, recs = draws_dir
    best = select_best(Settings.aggregate(recs), "icl", "parity_pattern", MODEL)
    assert best["shots"] == 2 and best["draws"] == [1, 2, 3]  # the mean decides, not the best draw
    test = [r for r in aggregate_draws(recs) if r["split"] == "test" and r["condition"] == "icl" and r["shots"] == 2]
    [agg] = test
    assert agg["accuracy"] == pytest.approx(34 / 40)
    assert (agg["draw_min"], agg["draw_max"]) == (30 / 40, 38 / 40)
    bounds = [wilson_interval(c, 40) for c in (30, 34, 38)]
    assert agg["ci_low"] == pytest.approx(sum(lo for lo, _ in bounds) / 3)
    assert len(agg["predictions"]) == 3
    assert aggregate_draws(aggregate_draws(recs)) == aggregate_draws(recs)  # idempotent
    assert Settings.aggregate(Settings.aggregate(recs)) == Settings.aggregate(recs)


def test_equal_draws_plot_without_a_negative_range(tmp_path):
    """Three draws of 1/40 each: their float mean exceeds 1/40 by one ulp unless held in their range,
    and matplotlib refuses a negative error bar (the study's Gemma report stopped there)."""
    t = "parity_pattern"
    recs = [cell(tmp_path, "icl", t, s, 2, outcomes(1, 40), draw=d) for s in ("validation", "test") for d in (1, 2, 3)]
    [agg] = [r for r in aggregate_draws(recs) if r["split"] == "test"]
    assert agg["draw_min"] <= agg["accuracy"] <= agg["draw_max"]
    assert plot_task(Settings.aggregate(recs), t, MODEL, tmp_path / "plots" / "p.png").is_file()


def test_draws_pair_items_on_their_mean_correctness(draws_dir):
    from iclvsft.compare.stats import paired_sign_flip

    out, recs = draws_dir
    result = compare(Settings.aggregate(recs), "parity_pattern", MODEL, "test", out)
    icl_scores = [sum(i < c for c in (30, 34, 38)) / 3 for i in range(40)]
    ft_scores = [float(i < 20) for i in range(40)]
    expected = paired_sign_flip(icl_scores, ft_scores, 3)
    assert result.mcnemar == expected and "sign-flip" in result.mcnemar.method
    assert result.winner == "icl"
    report = write_report(Settings.aggregate(recs), out, META).read_text()
    assert "mean of 3 draws, range 0.750–0.950" in report
    assert "sign-flip" in report


# --- report.md, byte for byte -------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "report"
#: A circuit section as ``run_circuit_analyses`` shapes it (trailing blank lines included).
CIRCUIT_SECTION = [
    "## Circuit shift",
    "",
    "Which heads the demonstrations change.",
    "",
    "### `parity_pattern`",
    "",
    "Note: there is no FT result.",
    "",
    "Not analysed.",
    "",
    "",
]


def _degraded(out: Path, recs: list[dict]) -> tuple[list[dict], dict]:
    """No FT for boolean_pattern, no task code_pattern, two prediction files gone (one of them chosen)."""
    icl_only = [r for r in recs if not (r["task"] == "boolean_pattern" and r["condition"] == "ft")]
    (out / icl_only[0]["predictions"]).unlink()
    ft = next(
        r
        for r in recs
        if r["task"] == "parity_pattern" and r["condition"] == "ft" and r["split"] == "test" and r["ft_samples"] == 400
    )
    (out / ft["predictions"]).unlink()
    return icl_only, dict(META, tasks=["parity_pattern", "boolean_pattern", "code_pattern"])


@pytest.mark.parametrize(
    "fixture, section, degraded, golden",
    [
        ("run_dir", (), False, "report.md"),
        ("run_dir", CIRCUIT_SECTION, False, "report_circuits.md"),
        ("draws_dir", (), False, "report_draws.md"),
        ("run_dir", (), True, "report_degraded.md"),
    ],
)
def test_report_matches_its_golden(request, tmp_path, fixture, section, degraded, golden):
    """The goldens were written by the report writer before it was split into modules (and the circuit
    section appended to the file afterwards): the same records must still give the same bytes."""
    out, recs = request.getfixturevalue(fixture)
    meta = META
    if degraded:
        recs, meta = _degraded(out, recs)
    path = write_report(
        Settings.aggregate(recs), tmp_path / "report", meta, base_dir=out, plots=False, circuit_section=section
    )
    assert path.read_bytes() == (GOLDEN / golden).read_bytes()


# --- pattern use: shortcut and invalid rates ------------------------------------------------------------


def test_pattern_use_counts_shortcut_and_invalid_answers():
    from iclvsft.compare.records import mark_pattern_use, pattern_use
    from iclvsft_tasks.scoring import INVALID

    # Hand-built test_broken rows: gold 7, shortcut answer 3.
    predictions = ["3", "3", "7", INVALID, "5", "3", INVALID, "3", "7", "3"]
    rows = [
        mark_pattern_use({"id": str(i), "answer": "7", "prediction": p, "correct": p == "7"}, "3", INVALID)
        for i, p in enumerate(predictions)
    ]
    assert [r["shortcut"] for r in rows] == [p == "3" for p in predictions]
    assert [r["invalid"] for r in rows] == [p == INVALID for p in predictions]
    assert all(r["shortcut_answer"] == "3" for r in rows)
    use = pattern_use(rows)
    assert (use["shortcut"], use["invalid"]) == (5, 2)
    assert use["shortcut_rate"] == 0.5 and use["invalid_rate"] == 0.2
    assert (use["shortcut_ci_low"], use["shortcut_ci_high"]) == wilson_interval(5, 10)
    assert (use["invalid_ci_low"], use["invalid_ci_high"]) == wilson_interval(2, 10)
    # On a pattern item the shortcut answer is the gold: the shortcut rate is the accuracy.
    pattern = [mark_pattern_use({"prediction": p}, "7", INVALID) for p in predictions]
    assert pattern_use(pattern)["shortcut"] == predictions.count("7")


def pattern_cell(out: Path, condition: str, knob: int, shortcut: list[bool], draw: int = 0, **extra) -> dict:
    """A test_broken cell whose answers are the shortcut's (``shortcut``) or unreadable (the others)."""
    from iclvsft.compare.records import pattern_use

    rec = cell(out, condition, "parity_pattern", "test_broken", knob, [False] * len(shortcut), draw=draw, **extra)
    path = out / rec["predictions"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, used in zip(rows, shortcut):
        row.update(shortcut_answer="even", prediction="even" if used else "[invalid]", shortcut=used, invalid=not used)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rec.update(pattern_use(rows))
    return rec


def _with_pattern_use(out: Path, recs: list[dict], rec: dict) -> dict:
    from iclvsft.compare.records import pattern_use

    rows = [json.loads(line) for line in (out / rec["predictions"]).read_text().splitlines()]
    for row in rows:
        row.update(shortcut_answer=row["answer"], shortcut=row["correct"], invalid=False)
    (out / rec["predictions"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**rec, **pattern_use(rows)}


@pytest.fixture
def pattern_dir(tmp_path) -> tuple[Path, list[dict]]:
    """parity: ICL k*=2 (3 draws), FT n*=100; on test_broken, FT answers with the shortcut more often."""
    out, recs = tmp_path, []
    for k, val in ((0, 8), (2, 15)):
        for d in range(1, 4) if k else [0]:
            recs.append(cell(out, "icl", "parity_pattern", "validation", k, outcomes(val, 20), draw=d))
            recs.append(cell(out, "icl", "parity_pattern", "test", k, outcomes(20, 40), draw=d))
    for n, val in ((100, 14), (400, 12)):
        recs.append(cell(out, "ft", "parity_pattern", "validation", n, outcomes(val, 20)))
        recs.append(cell(out, "ft", "parity_pattern", "test", n, outcomes(30, 40)))
    recs = [_with_pattern_use(out, recs, r) for r in recs]
    icl_uses = {1: 8, 2: 10, 3: 12}  # of 40 items, the first ones
    for d, used in icl_uses.items():
        recs.append(pattern_cell(out, "icl", 2, outcomes(used, 40), draw=d))
    recs.append(pattern_cell(out, "icl", 0, outcomes(0, 40)))
    recs.append(pattern_cell(out, "ft", 100, outcomes(30, 40)))
    recs.append(pattern_cell(out, "ft", 400, outcomes(35, 40)))
    return out, recs


def test_pattern_use_is_aggregated_over_draws_and_tested_paired(pattern_dir):
    from iclvsft.compare.stats import paired_sign_flip

    out, recs = pattern_dir
    settings = Settings.aggregate(recs)
    [icl] = [r for r in settings if r["condition"] == "icl" and r["split"] == "test_broken" and r["shots"] == 2]
    assert icl["shortcut_rate"] == pytest.approx(10 / 40) and icl["invalid_rate"] == pytest.approx(30 / 40)
    bounds = [wilson_interval(c, 40) for c in (8, 10, 12)]
    assert icl["shortcut_ci_low"] == pytest.approx(sum(lo for lo, _ in bounds) / 3)
    result = compare(settings, "parity_pattern", MODEL, "test_broken", out)
    assert (result.icl["shots"], result.ft["ft_samples"]) == (2, 100)
    icl_scores = [sum(i < u for u in icl_uses) / 3 for i, icl_uses in [(i, (8, 10, 12)) for i in range(40)]]
    ft_scores = [float(i < 30) for i in range(40)]
    assert result.shortcut_test == paired_sign_flip(icl_scores, ft_scores, 3)
    assert result.shortcut_winner == "ft"
    assert result.shortcut_verdict.startswith("FT (n*=100) used the shortcut more than ICL (k*=2), p=")
    assert result.winner is None  # both 0/40 correct on test_broken: accuracy cannot tell them apart
    report = write_report(settings, out, META).read_text()
    assert "## Pattern use" in report
    row = next(line for line in report.splitlines() if line.startswith("| tiny-model | `parity_pattern` | 2 | 0.250"))
    assert "| 100 | 0.750 [" in row and "FT (n*=100) used the shortcut more" in row
    assert "Pattern use: FT (n*=100) used the shortcut more than ICL (k*=2)" in report
    plot = plot_task(settings, "parity_pattern", MODEL, out / "plots" / "p.png")
    from matplotlib.image import imread

    assert imread(plot).shape[0] > 700  # the pattern-use row below the accuracy row


def test_records_without_pattern_use_keep_their_report(run_dir):
    from iclvsft.compare.records import has_pattern_use

    out, recs = run_dir
    assert not any(map(has_pattern_use, recs))
    c = compare(Settings.aggregate(recs), "parity_pattern", MODEL, "test_broken", out)
    assert c.shortcut_test is None and c.shortcut_verdict == ""
    assert "## Pattern use" not in write_report(Settings.aggregate(recs), out, META, plots=False).read_text()


# --- several recipes, several models -----------------------------------------------------------------


def test_n_star_and_the_recipe_are_chosen_together_and_curves_stay_apart(tmp_path):
    from iclvsft.compare.records import curve, find_cell

    out, recs, t = tmp_path, [], "parity_pattern"
    recs.append(cell(out, "icl", t, "validation", 0, outcomes(5, 20)))
    recs.append(cell(out, "icl", t, "test", 0, outcomes(10, 40)))
    for recipe, val, test in (("lora", {16: 9, 64: 12}, {16: 10, 64: 20}), ("full", {16: 8, 64: 16}, {16: 5, 64: 36})):
        for n in (16, 64):
            recs.append(cell(out, "ft", t, "validation", n, outcomes(val[n], 20), recipe=recipe))
            recs.append(cell(out, "ft", t, "test", n, outcomes(test[n], 40), recipe=recipe))
    for rec in recs:  # distinct prediction files per recipe
        if rec.get("recipe"):
            rec["key"] += rec["recipe"]
    settings = Settings.aggregate(recs)
    assert len([r for r in settings if r["condition"] == "ft"]) == 8  # recipes are never averaged as draws
    best = select_best(settings, "ft", t, MODEL)
    assert (best["recipe"], best["ft_samples"]) == ("full", 64)
    assert find_cell(settings, best, "test")["correct"] == 36
    assert [p.accuracy for p in curve(settings, "ft", t, MODEL, "test", recipe="lora")] == [0.25, 0.5]
    assert [p.accuracy for p in curve(settings, "ft", t, MODEL, "test", recipe="full")] == [0.125, 0.9]
    text = write_report(settings, out, META).read_text()
    assert "FT: n*=64 with the `full` recipe chosen on validation" in text and "| 64 (full) |" in text
    table = summary_table(settings)
    assert "lora n=16" in table and "full n=64" in table and "0.900*" in table


def test_the_figure_across_models(run_dir, tmp_path):
    from matplotlib.image import imread

    from iclvsft.compare.plots import plot_models

    out, recs = run_dir
    other = []
    for r in recs:  # a weaker model: half the correct answers
        lo, hi = wilson_interval(r["correct"] // 2, r["n"])
        other.append({**r, "model": "other-model", "correct": r["correct"] // 2, "ci_low": lo, "ci_high": hi})
        other[-1]["accuracy"] = other[-1]["correct"] / r["n"]
    settings = Settings.aggregate(recs + other)
    path = plot_models(
        settings, ["parity_pattern", "boolean_pattern"], [MODEL, "other-model"], tmp_path / "models.png", {}
    )
    assert imread(path).shape[1] > 500
    sized = plot_models(
        settings,
        ["parity_pattern"],
        ["other-model", MODEL],
        tmp_path / "sized.png",
        {MODEL: 10_000, "other-model": 100_000},
    )
    assert sized.stat().st_size > 1000
    meta = dict(META, model=["other-model", MODEL], model_parameters={MODEL: 10_000, "other-model": 100_000})
    text = write_report(settings, tmp_path / "both", meta, base_dir=out).read_text()
    assert text.index("— other-model") < text.index(f"— {MODEL}")  # the run's order of models
    assert "](plots/models.png)" in text and (tmp_path / "both" / "plots" / "models.png").is_file()


def test_the_constant_answer_is_each_splits_most_frequent_gold(tmp_path):
    from iclvsft.compare.verdicts import constant_answer

    recs = [cell(tmp_path, "icl", "relation_pattern", "test", k, outcomes(1, 5)) for k in (0, 2)]
    golds = ["False", "True", "False", "True", "False"]
    for rec in recs[1:]:  # the first cell's file is gone: the second one's golds are read
        path = tmp_path / rec["predictions"]
        rows = [dict(json.loads(line), answer=g) for line, g in zip(path.read_text().splitlines(), golds)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / recs[0]["predictions"]).unlink()
    const = constant_answer(Settings.aggregate(recs), "relation_pattern", "test", tmp_path)
    assert (const.answer, const.correct, const.n, const.accuracy) == ("False", 3, 5, 0.6)
    assert constant_answer(Settings.aggregate(recs), "relation_pattern", "validation", tmp_path) is None
    text = write_report(Settings.aggregate(recs), tmp_path / "r", META, base_dir=tmp_path, plots=False).read_text()
    assert "| `relation_pattern` | test | `False` | 0.600 (3/5) |" in text
