"""Answer extraction: a leading space is fine, substring containment never scores."""

from __future__ import annotations

import pytest

from iclvsft_tasks.prompts import render_completion, render_prompt
from iclvsft_tasks.scoring import INVALID, extract_answer, extract_answers, is_correct


@pytest.mark.parametrize(
    "task, continuation, expected",
    [
        ("expression_pattern", " 5", "5"),
        ("expression_pattern", "5", "5"),
        ("expression_pattern", " -24", "-24"),
        ("expression_pattern", " 10", "10"),
        ("expression_pattern", " 5.", "5"),
        ("expression_pattern", " 5, because", "5"),
        ("expression_pattern", " 5.5", INVALID),
        ("expression_pattern", " 5x", INVALID),
        ("expression_pattern", " the answer is 5", INVALID),
        ("expression_pattern", "", INVALID),
        ("code_pattern", " 327", "327"),
        ("boolean_pattern", " True", "True"),
        ("boolean_pattern", " true.", "True"),
        ("boolean_pattern", " FALSE", "False"),
        ("boolean_pattern", " Truely", INVALID),
        ("boolean_pattern", " 1", INVALID),
        ("relation_pattern", "\tFalse", "False"),
        ("parity_pattern", " Odd", "odd"),
        ("parity_pattern", " oddly even", INVALID),
    ],
)
def test_extract_answer(task, continuation, expected):
    assert extract_answer(task, continuation) == expected


def test_no_substring_credit():
    assert not is_correct("expression_pattern", " 10", "1")
    assert not is_correct("expression_pattern", " 12", "1")
    assert not is_correct("expression_pattern", " -1", "1")
    assert not is_correct("expression_pattern", " 1 0", "0")
    assert is_correct("expression_pattern", " 1\n", "1")


def test_filter_applies_per_document_task():
    docs = [{"task": "parity_pattern"}, {"task": "boolean_pattern"}]
    assert extract_answers([[" even", " odd"], [" true"]], docs) == [["even", "odd"], ["True"]]


def test_prompt_and_completion_compose_to_the_demo_layout():
    item = {"task": "boolean_pattern", "question": "True or False", "answer": "True"}
    demo = {"task": "boolean_pattern", "question": "(False) and False", "answer": "False"}
    prompt = render_prompt(item, [demo])
    assert prompt == (
        "Evaluate each Boolean expression using Python's operator precedence. Answer True or False."
        "\n\n(False) and False\nAnswer: False\n\nTrue or False\nAnswer:"
    )
    assert render_completion(item) == " True"
    assert render_prompt({"task": "expression_pattern", "question": "(1)+(0)*(2)=", "answer": "1"}).endswith(
        "\n\n(1)+(0)*(2)="
    )
