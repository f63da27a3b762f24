"""iclvsft compare with several models and several fine-tuning recipes, end to end on two tiny models;
and the shipped experiments `study` and `study-gpu` (loaded and validated, never run here)."""

from __future__ import annotations

import json

import pytest
from test_compare import _compare, _flags

from iclvsft.compare.config import load_experiment
from iclvsft.models import model_label
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.registry import TASKS


def _by_model(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["model"], []).append(r)
    return out


def _items(out, rec) -> list[str]:
    return [json.loads(line)["id"] for line in (out / rec["predictions"]).read_text().splitlines()]


@pytest.fixture(scope="module")
def two_models(tiny_llama, tiny_llama_wide, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "run"
    flags = _flags(tiny_llama, out)
    flags[flags.index("--model") + 1] = f"{tiny_llama},{tiny_llama_wide}"
    proc = _compare([*flags, "--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, flags


def test_several_models_share_items_and_draws_and_fine_tune_each(two_models, tiny_llama, tiny_llama_wide):
    out, _ = two_models
    records = json.loads((out / "results.json").read_text())
    by_model = _by_model(records)
    narrow, wide = model_label(str(tiny_llama)), model_label(str(tiny_llama_wide))
    assert set(by_model) == {narrow, wide}
    grid = {(r["condition"], r["split"], r["shots"], r["ft_samples"], r["draw"]) for r in by_model[narrow]}
    assert grid == {(r["condition"], r["split"], r["shots"], r["ft_samples"], r["draw"]) for r in by_model[wide]}
    assert len(by_model[narrow]) == len(by_model[wide]) == (1 + 2 + 2) * 3 + 2 * 3
    for rec in by_model[narrow]:  # the same items, and the same demonstrations, for both models
        twin = next(
            r
            for r in by_model[wide]
            if (r["condition"], r["split"], r["shots"], r["ft_samples"], r["draw"])
            == (rec["condition"], rec["split"], rec["shots"], rec["ft_samples"], rec["draw"])
        )
        assert _items(out, rec) == _items(out, twin) and rec.get("demo_ids") == twin.get("demo_ids")
        assert rec["fingerprint"] == twin["fingerprint"] and rec["key"] != twin["key"]
    assert len(list((out / "ft").glob("*/milestones/samples-16"))) == 2  # a fine-tune per model
    assert {r["recipe"] for r in records if r["condition"] == "ft"} == {"lora"}
    for r in records:  # pattern use in every record
        assert 0 <= r["shortcut_rate"] <= 1 and 0 <= r["invalid_rate"] <= 1
        assert r["shortcut_ci_low"] <= r["shortcut_rate"] <= r["shortcut_ci_high"]
    report = (out / "report.md").read_text()
    assert "## Pattern use" in report and "## Across models" in report and "](plots/models.png)" in report
    assert f"## `parity_pattern` — {narrow}" in report and f"## `parity_pattern` — {wide}" in report
    assert len(list((out / "plots").glob("parity_pattern__*.png"))) == 2 and (out / "plots" / "models.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == [narrow, wide]
    sizes = run["model_parameters"]
    assert sizes[wide] > sizes[narrow] > 0


def test_adding_a_model_keeps_the_first_models_cells(two_models, tiny_llama, tmp_path):
    """A model's cell keys do not depend on the other models of the run: one-model runs reuse them."""
    out, _ = two_models
    records = json.loads((out / "results.json").read_text())
    narrow = model_label(str(tiny_llama))
    single = _flags(tiny_llama, out)
    proc = _compare([*single, "--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = json.loads((out / "results.json").read_text())
    assert alone == [r for r in records if r["model"] == narrow]  # nothing evaluated again: the same records
    assert "Training completed" not in proc.stdout + proc.stderr


def test_a_second_recipe_adds_its_fine_tunes_and_n_star_spans_both(two_models, tiny_llama):
    out, _ = two_models
    single = _flags(tiny_llama, out)
    narrow = model_label(str(tiny_llama))
    before = {r["key"] for r in json.loads((out / "results.json").read_text()) if r["model"] == narrow}
    proc = _compare([*single, "--recipe", "lora,full", "--learning_rate", "3e-3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((out / "results.json").read_text())
    ft = [r for r in records if r["condition"] == "ft"]
    assert {r["recipe"] for r in ft} == {"lora", "full"} and len(ft) == 2 * 2 * 3
    assert before <= {r["key"] for r in records}  # the lora cells were reused
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("key,model,task,condition,split,shots,ft_samples,recipe,")
    report = (out / "report.md").read_text()
    assert " recipe chosen on validation" in report and "lora n=16" in proc.stdout and "full n=16" in proc.stdout


def test_model_and_recipe_lists_are_checked():
    exp = load_experiment(None, {"model": "default,smollm2-135m", "recipe": "lora,full"})
    assert exp.models == ["default", "smollm2-135m"] and exp.recipes == ["lora", "full"]
    assert load_experiment(None, {}).models == ["default"]
    for bad, message in (
        ({"model": "default,gemma-3-270m"}, "more than once"),
        ({"model": "default,"}, "must not be empty"),
        ({"recipe": "lora,lora"}, "twice"),
        ({"recipe": "lora,../x"}, "recipe"),
        ({"model": 3}, "a name or a list of names"),
    ):
        with pytest.raises(IclvsftError, match=message):
            load_experiment(None, bad)


def test_the_study_experiment_is_the_issue_grid():
    exp = load_experiment("study", {})
    assert exp.models == ["default", "smollm2-135m"] and sorted(exp.tasks) == sorted(TASKS)
    assert exp.data.size("test") >= 200 and exp.data.size("test_broken") >= 200
    assert exp.data.size("validation") >= 100
    assert {0, 1, 2, 4, 8, 16} <= set(exp.shots) and exp.demos == "fixed" and exp.draws == 3
    assert min(exp.ft_samples) <= 16 and max(exp.ft_samples) >= 1024 and max(exp.ft_samples) >= 30 * max(exp.shots)
    assert exp.dtype == "float32" and exp.circuits is True and exp.recipes[0] == "lora"
    assert exp.eval_backend == "iclvsft-hf"


def test_the_gpu_study_names_the_papers_models_and_vllm():
    exp = load_experiment("study-gpu", {})
    assert all(m.startswith("Qwen/Qwen2.5-") for m in exp.models) and len(exp.models) >= 3
    assert "Qwen/Qwen2.5-0.5B" in exp.models and "Qwen/Qwen2.5-7B" in exp.models
    assert exp.eval_backend == "vllm" and exp.recipes == ["paper"] and sorted(exp.tasks) == sorted(TASKS)
    assert exp.data.size("test") > 200 and exp.data.size("test_broken") > 200
    assert exp.device == "cuda"
