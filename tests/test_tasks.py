"""Every task: golds from the generator agree with the independent solver, the shortcut works on
pattern items and fails on broken ones, items carry the promised fields, configs reject bad values."""

from __future__ import annotations

import ast
import random
import re

import pytest

from iclvsft_tasks.data.splits import SplitSpec, build_splits
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.base import question_id
from iclvsft_tasks.tasks.boolean import BooleanConfig
from iclvsft_tasks.tasks.expression import ExpressionConfig
from iclvsft_tasks.tasks.parity import ParityConfig
from iclvsft_tasks.tasks.registry import TASKS, get_task, parse_task_list
from iclvsft_tasks.tasks.relation import RelationConfig, connected

ITEMS = 1000
FIELDS = {"id", "task", "split", "question", "answer", "pattern", "shortcut_answer", "meta"}


@pytest.fixture(scope="module", params=list(TASKS))
def splits(request):
    return build_splits(
        SplitSpec(request.param, seed=3, test_size=ITEMS, test_broken_size=ITEMS, validation_size=50, train_size=ITEMS)
    )


def test_the_five_tasks_are_registered():
    assert list(TASKS) == [
        "expression_pattern",
        "code_pattern",
        "boolean_pattern",
        "relation_pattern",
        "parity_pattern",
    ]


def test_golds_equal_the_independent_solver(splits):
    for items in splits.values():
        task = get_task(items[0]["task"])
        for item in items:
            assert task.solve(item["meta"]) == item["answer"], item["question"]
            assert task.shortcut(item["meta"]) == item["shortcut_answer"], item["question"]


def test_pattern_items_obey_the_shortcut_and_broken_items_defeat_it(splits):
    for split, items in splits.items():
        for item in items:
            assert item["pattern"] is (split != "test_broken")
            assert (item["answer"] == item["shortcut_answer"]) is item["pattern"], item["question"]


def test_items_have_every_promised_field(splits):
    for split, items in splits.items():
        for item in items:
            assert set(item) == FIELDS
            assert item["split"] == split
            assert item["id"] == question_id(item["question"])
            assert isinstance(item["answer"], str) and item["answer"]
            assert item["question"] == item["question"].strip()


def test_answers_match_the_tasks_answer_pattern(splits):
    for items in splits.values():
        task = get_task(items[0]["task"])
        pattern = re.compile(task.answer_regex)
        for item in items:
            assert pattern.fullmatch(item["answer"]), item["answer"]
            if task.choices:
                assert item["answer"] in task.choices


def test_binary_golds_are_not_constant(splits):
    """A split whose gold is always the same answer would reward a constant guess."""
    for split, items in splits.items():
        if split == "test_broken" and items[0]["task"] == "relation_pattern":
            continue  # broken relation items are False by construction (Z present, not linked)
        golds = {item["answer"] for item in items}
        assert len(golds) > 1, split


def test_broken_relation_graphs_have_two_components():
    task = get_task("relation_pattern")
    rng = random.Random(5)
    for _ in range(500):
        draft = task.generate(rng, pattern=False)
        edges = draft.meta["edges"]
        cities = {c for edge in edges for c in edge}
        # A and Z both appear and are not linked: at least two components.
        assert {"A", "Z"} <= cities and not connected(edges, "A", "Z")
        assert draft.answer == "False" and draft.shortcut_answer == "True"


def test_expression_question_is_exactly_s_z_c_from_meta():
    task = get_task("expression_pattern")
    rng = random.Random(1)
    for pattern in (True, False):
        for _ in range(500):
            draft = task.generate(rng, pattern)
            m = draft.meta
            assert draft.question == f"({m['simple']})+({m['zero']})*({m['complex']})="
            assert " " not in draft.question
            assert len(re.findall(r"-?\d+", m["complex"])) == 4
            assert 2 <= len(re.findall(r"-?\d+", m["zero"])) <= 4
            # Third opinion: Python's own arithmetic on the question.
            assert str(eval(draft.question[:-1])) == draft.answer
            assert (eval(m["zero"]) == 0) is pattern


def test_boolean_items_end_in_a_deciding_suffix_and_match_python():
    task = get_task("boolean_pattern")
    rng = random.Random(2)
    for pattern in (True, False):
        for _ in range(500):
            draft = task.generate(rng, pattern)
            expr = draft.question
            suffix = " ".join(expr.split()[-2:])
            assert suffix in (("and False", "or True") if pattern else ("and True", "or False"))
            assert str(eval(expr)) == draft.answer
            groups = ast.parse(expr, mode="eval")
            assert groups is not None
            assert 2 <= expr.count("(") - (1 if suffix.startswith("and") else 0) <= 4


def test_parity_pattern_items_are_all_odd_and_broken_items_mix_evens():
    task = get_task("parity_pattern")
    rng = random.Random(4)
    for pattern in (True, False):
        for _ in range(500):
            numbers = task.generate(rng, pattern).meta["numbers"]
            assert 3 <= len(numbers) <= 12 and all(n >= 10 for n in numbers)
            evens = sum(1 for n in numbers if n % 2 == 0)
            assert (evens == 0) if pattern else (evens % 2 == 1)


def test_relation_pattern_items_mention_z_exactly_when_connected():
    task = get_task("relation_pattern")
    rng = random.Random(6)
    for _ in range(1000):
        draft = task.generate(rng, pattern=True)
        edges = draft.meta["edges"]
        mentions_z = any("Z" in e for e in edges)
        assert mentions_z is connected(edges, "A", "Z")
        assert draft.question.endswith("Are cities A and Z connected?")


@pytest.mark.parametrize(
    "config",
    [
        lambda: ExpressionConfig(zero_terms=(5, 2)),
        lambda: ExpressionConfig(zero_range=0),
        lambda: BooleanConfig(groups=(1, 3)),
        lambda: ParityConfig(count=(0, 4)),
        lambda: ParityConfig(value=(4, 5)),
        lambda: RelationConfig(cities=(2, 5)),
        lambda: RelationConfig(extra_edge_prob=1.5),
    ],
)
def test_configs_reject_bad_values(config):
    with pytest.raises(IclvsftError):
        config().validate()


def test_task_settings_can_be_overridden_and_are_validated():
    task = get_task("parity_pattern", count=(5, 5))
    assert len(task.generate(random.Random(0), True).meta["numbers"]) == 5
    with pytest.raises(IclvsftError, match="unknown setting"):
        get_task("parity_pattern", cnt=(5, 5))
    with pytest.raises(IclvsftError):
        get_task("parity_pattern", count=(9, 5))


def test_unknown_task_names_are_refused_with_the_known_list():
    with pytest.raises(IclvsftError, match="known tasks: expression_pattern"):
        get_task("parity")
    with pytest.raises(IclvsftError):
        parse_task_list("parity_pattern,nope")
    assert parse_task_list("all") == list(TASKS)
