"""Fixed demonstration sets: one set per draw for every query, nested across k, seeded in one
place, and exposed to lm-eval through metadata; per-item sampling stays lm-eval's own."""

from __future__ import annotations

import pytest
from conftest import SMALL_METADATA

import iclvsft_tasks
from iclvsft_tasks import demos, lm_eval_glue
from iclvsft_tasks.data.splits import SplitSpec, build_split
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.prompts import render_prompt

SPEC = lm_eval_glue.data_from_metadata(SMALL_METADATA).split_spec("expression_pattern")


def _task(name: str, **settings):
    tm = iclvsft_tasks.task_manager(metadata=dict(SMALL_METADATA), **settings)
    task = tm.load([name])["tasks"][name]
    task.set_fewshot_seed(1234)
    return task


def test_fixed_sets_are_nested_across_k_and_differ_between_draws():
    eight = demos.fixed_demo_ids(SPEC, 1, 8)
    assert demos.fixed_demo_ids(SPEC, 1, 4) == eight[:4]
    assert demos.fixed_demo_ids(SPEC, 2, 8) != eight
    assert demos.fixed_demo_ids(SPEC, 1, 8) == eight  # deterministic
    train_ids = {item["id"] for item in build_split(SPEC, "train")}
    assert set(eight) <= train_ids and len(set(eight)) == 8
    other_seed = SplitSpec("expression_pattern", seed=1, **{f"{s}_size": n for s, n in SPEC.sizes().items()})
    assert demos.fixed_demo_ids(other_seed, 1, 8) != eight


@pytest.mark.parametrize("shots", [1, 4, 8])
def test_lm_eval_fixed_mode_shows_the_same_draw_demos_to_every_query(shots):
    task = _task(f"expression_pattern_{shots}shot", demos="fixed", draw=2)
    expected = demos.fixed_demos(SPEC, 2, shots)
    for doc in list(task.test_docs())[:5]:
        assert task.fewshot_context(doc, num_fewshot=shots) == render_prompt(doc, expected)


def test_lm_eval_fixed_mode_works_for_validation_broken_and_multiple_choice_variants():
    for name in ("parity_pattern_validation_2shot", "parity_pattern_broken_2shot", "parity_pattern_mc_2shot"):
        spec = lm_eval_glue.data_from_metadata(SMALL_METADATA).split_spec("parity_pattern")
        task = _task(name, demos="fixed", draw=1)
        doc = next(iter(task.test_docs()))
        assert task.fewshot_context(doc, num_fewshot=2) == render_prompt(doc, demos.fixed_demos(spec, 1, 2))


def test_per_item_mode_is_lm_eval_default_sampling():
    task = _task("expression_pattern_4shot")
    contexts = {task.fewshot_context(doc, num_fewshot=4).rsplit("\n\n", 1)[0] for doc in list(task.test_docs())[:6]}
    assert len(contexts) > 1  # demonstrations change from query to query
    explicit = _task("expression_pattern_4shot", demos="per-item")
    docs = list(task.test_docs())[:3]
    task.set_fewshot_seed(7)
    explicit.set_fewshot_seed(7)
    assert [task.fewshot_context(d, 4) for d in docs] == [explicit.fewshot_context(d, 4) for d in docs]


def test_more_shots_than_the_pool_is_one_clear_error():
    tm = iclvsft_tasks.task_manager(metadata={**SMALL_METADATA, "iclvsft_train_size": 3}, demos="fixed")
    task = tm.load(["expression_pattern_4shot"])["tasks"]["expression_pattern_4shot"]
    with pytest.raises(IclvsftError, match="4 demonstrations requested but the train split holds 3"):
        task.fewshot_context(next(iter(task.test_docs())), num_fewshot=4)
    with pytest.raises(IclvsftError, match="train split holds 3"):
        demos.fixed_demos(
            SplitSpec("expression_pattern", train_size=3, test_size=2, test_broken_size=2, validation_size=2), 1, 4
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"demos": "random"}, "demonstration mode must be one of per-item, fixed"),
        ({"demos": "fixed", "draw": 0}, "iclvsft_draw must be an integer >= 1"),
        ({"draw": 2}, "iclvsft_draw needs iclvsft_demos=fixed"),
    ],
)
def test_bad_demo_settings_are_refused(settings, message):
    with pytest.raises(IclvsftError, match=message):
        iclvsft_tasks.task_manager(**settings)


def test_bad_demo_metadata_through_lm_eval_is_refused():
    tm = iclvsft_tasks.task_manager(metadata={**SMALL_METADATA, "iclvsft_demos": "fixed", "iclvsft_draw": -1})
    with pytest.raises(IclvsftError, match="iclvsft_draw must be an integer >= 1"):
        tm.load(["expression_pattern_2shot"])
