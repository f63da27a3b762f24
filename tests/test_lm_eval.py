"""Our tasks inside lm-evaluation-harness: indexed, prompted exactly as our formatter says, scored
by exact match on the extracted answer, and runnable through the Python API end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SMALL_METADATA

import iclvsft_tasks
from iclvsft_tasks import lm_eval_glue
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.lm_eval_configs import SHOTS, group_name, render_configs, variant_name
from iclvsft_tasks.prompts import TARGET_DELIMITER, query, render_prompt
from iclvsft_tasks.scoring import INVALID
from iclvsft_tasks.tasks.registry import TASKS, get_task

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def tm():
    return iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA))


def _load(tm, name):
    task = tm.load([name])["tasks"][name]
    task.set_fewshot_seed(1234)
    return task


def all_variant_names() -> list[str]:
    names = []
    for task, cls in TASKS.items():
        for mc in (False, True) if cls.choices else (False,):
            for split in ("test", "test_broken") + (() if mc else ("validation",)):
                names += [variant_name(task, mc=mc, shots=shots, split=split) for shots in (None, *SHOTS)]
    return names


def test_committed_yamls_are_what_the_registry_renders():
    root = Path(lm_eval_glue.tasks_dir())
    on_disk = {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*.yaml")}
    assert on_disk == render_configs(), "task_configs/ is stale: run `make configs`"


def test_every_task_variant_and_group_is_indexed(tm):
    assert set(all_variant_names()) <= set(tm.all_subtasks)
    assert len(all_variant_names()) == 5 * 24 + 3 * 16
    assert "parity_pattern_validation_4shot" in tm.all_subtasks
    groups = {group_name(broken, shots) for broken in (False, True) for shots in (None, *SHOTS)}
    assert groups <= set(tm.all_groups)
    assert {"iclvsft_patterns", "iclvsft_patterns_broken"} <= set(tm.all_groups)


def test_groups_hold_all_five_tasks(tm):
    loaded = tm.load(["iclvsft_patterns", "iclvsft_patterns_broken"])
    assert set(loaded["tasks"]) == set(TASKS) | {f"{t}_broken" for t in TASKS}
    for name, task in loaded["tasks"].items():
        assert task.config.num_fewshot == 8
        assert task.config.test_split == ("test_broken" if name.endswith("_broken") else "test")
        assert task.config.fewshot_split == "train"


def test_loading_a_group_builds_each_tasks_splits_once(tm):
    lm_eval_glue.dataset_dict.cache_clear()
    tm.load(["iclvsft_patterns_0shot", "iclvsft_patterns_broken_4shot", "parity_pattern_mc"])
    assert lm_eval_glue.dataset_dict.cache_info().misses == len(TASKS)


@pytest.mark.parametrize("task_name", list(TASKS))
@pytest.mark.parametrize("shots", [0, 1, 4])
@pytest.mark.parametrize("split", ["test", "test_broken", "validation"])
def test_fewshot_context_is_k_train_demos_then_the_query(tm, task_name, shots, split):
    task = _load(tm, variant_name(task_name, shots=shots, split=split))
    train_ids = {d["id"] for d in task.fewshot_docs()}
    docs = list(task.test_docs())[:3]
    for doc in docs:
        text = task.doc_to_text(doc)
        assert text == query(doc) and text == text.rstrip()
        task.set_fewshot_seed(99)
        context = task.fewshot_context(doc, num_fewshot=shots)
        task.set_fewshot_seed(99)
        demos = task.sampler.sample(n=shots)
        assert len(demos) == shots and all(d["id"] in train_ids for d in demos)
        assert all(d["pattern"] for d in demos)  # demonstrations always follow the pattern
        assert context == render_prompt(doc, demos)
        assert context.endswith(query(doc))
        assert doc["split"] == split


@pytest.mark.parametrize("task_name", [t for t, c in TASKS.items() if c.choices])
def test_multiple_choice_variants_score_each_choice_after_the_delimiter(tm, task_name):
    task = _load(tm, variant_name(task_name, False, True, 2))
    doc = next(iter(task.test_docs()))
    requests = task.construct_requests(doc, task.fewshot_context(doc, 2))
    continuations = [r.arguments[1] for r in requests]
    assert continuations == [TARGET_DELIMITER + c for c in TASKS[task_name].choices]
    assert task.doc_to_target(doc) == doc["answer"]


@pytest.mark.parametrize("task_name", list(TASKS))
def test_golden_prompt_snapshot(tm, task_name):
    """The exact 2-shot prompt of the first test item; prompt drift must be deliberate."""
    task = _load(tm, f"{task_name}_2shot")
    doc = next(iter(task.test_docs()))
    context = task.fewshot_context(doc, num_fewshot=2) + TARGET_DELIMITER + doc["answer"]
    path = GOLDEN / f"{task_name}_2shot.txt"
    if os.environ.get("ICLVSFT_UPDATE_GOLDEN"):
        path.write_text(context, encoding="utf-8")
    assert context == path.read_text(encoding="utf-8")


def test_metadata_sets_sizes_and_seed():
    tm = iclvsft_tasks.task_manager(test_size=7, train_size=50, validation_size=5, test_broken_size=3, seed=2)
    task = tm.load(["parity_pattern_0shot"])["tasks"]["parity_pattern_0shot"]
    assert len(task.test_docs()) == 7 and len(task.fewshot_docs()) == 50
    other = iclvsft_tasks.task_manager(test_size=7, train_size=50, validation_size=5, test_broken_size=3, seed=3)
    docs = other.load(["parity_pattern_0shot"])["tasks"]["parity_pattern_0shot"].test_docs()
    assert [d["id"] for d in docs] != [d["id"] for d in task.test_docs()]


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"iclvsft_test_sise": 5}, "unknown iclvsft metadata"),
        ({"iclvsft_seed": "abc"}, "must be an integer"),
        ({"iclvsft_test_size": -3}, "test size"),
    ],
)
def test_bad_metadata_is_refused_in_one_line(metadata, message):
    tm = iclvsft_tasks.task_manager(metadata=metadata)
    with pytest.raises(IclvsftError, match=message):
        tm.load(["parity_pattern_0shot"])


def test_model_seed_in_metadata_does_not_clash_with_ours():
    tm = iclvsft_tasks.task_manager(metadata={"seed": 5, "pretrained": "x", **SMALL_METADATA})
    assert len(tm.load(["boolean_pattern"])["tasks"]["boolean_pattern"].test_docs()) == 12


# --- end to end through lm-eval's evaluator ---------------------------------------------------------


def _answer_model(field: str):
    """An lm-eval model that answers from a lookup of the query: the gold, or the shortcut."""
    from lm_eval.api.model import LM

    class AnswerModel(LM):
        def __init__(self):
            super().__init__()
            self.items = {}

        def generate_until(self, requests, disable_tqdm=False):
            out = []
            for request in requests:
                context = request.arguments[0]
                [item] = [i for q, i in self.items.items() if context.endswith(q)]
                out.append(TARGET_DELIMITER + item[field].lower() + " because")
            return out

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return AnswerModel()


@pytest.mark.parametrize("field, expected_test, expected_broken", [("answer", 1.0, 1.0), ("shortcut_answer", 1.0, 0.0)])
def test_scores_through_simple_evaluate_reward_the_gold_not_the_shortcut(field, expected_test, expected_broken):
    from lm_eval import simple_evaluate

    from iclvsft_tasks.data.splits import build_splits

    tm = iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA))
    lm = _answer_model(field)
    for task in TASKS:
        spec = lm_eval_glue.data_from_metadata(SMALL_METADATA).split_spec(task)
        for items in build_splits(spec).values():
            lm.items.update({query(i): i for i in items})
    names = [f"{t}_1shot" for t in TASKS] + [f"{t}_broken_1shot" for t in TASKS]
    result = simple_evaluate(model=lm, tasks=names, task_manager=tm, bootstrap_iters=0, log_samples=True)
    for name in names:
        expected = expected_broken if "_broken" in name else expected_test
        assert result["results"][name]["exact_match,extract"] == expected, name
    sample = result["samples"][names[0]][0]
    assert sample["filtered_resps"][0] == sample["target"] or field == "shortcut_answer"


def test_tiny_llama_runs_every_task_through_the_python_api(tiny_llama):
    from lm_eval import simple_evaluate

    tm = iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA))
    result = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_llama},dtype=float32",
        device="cpu",
        batch_size=4,
        tasks=["iclvsft_patterns_2shot", "iclvsft_patterns_broken_0shot", "relation_pattern_mc_1shot"],
        task_manager=tm,
        limit=4,
        bootstrap_iters=0,
        log_samples=True,
    )
    assert result["n-shot"]["code_pattern_2shot"] == 2
    for name in [f"{t}_2shot" for t in TASKS] + [f"{t}_broken_0shot" for t in TASKS]:
        assert 0.0 <= result["results"][name]["exact_match,extract"] <= 1.0
        for sample in result["samples"][name]:
            extracted = sample["filtered_resps"][0]
            assert extracted == INVALID or extracted == get_task(sample["doc"]["task"]).canonical_answer(extracted)
    assert "acc,none" in result["results"]["relation_pattern_mc_1shot"]


def test_task_manager_refuses_unknown_settings():
    with pytest.raises(IclvsftError, match="unknown setting 'test_sise'"):
        iclvsft_tasks.task_manager(test_sise=5)
