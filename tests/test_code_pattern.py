"""code_pattern: gold is what Python prints, solve/shortcut agree, no eval in the generator."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import iclvsft_tasks.tasks.code as code_module
from iclvsft_tasks.errors import IclvsftError
from iclvsft_tasks.tasks.code import CodeConfig, CodePattern

N_ITEMS = 1000

# Runs in a child process (exec is fine there): reads a JSON list of programs on stdin and
# writes the JSON list of what each one printed.
_HARNESS = """
import contextlib, io, json, sys
outputs = []
for program in json.load(sys.stdin):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(program, {"__name__": "__main__"})
    outputs.append(buffer.getvalue())
json.dump(outputs, sys.stdout)
"""


def _drafts(pattern: bool, seed: int, n: int = N_ITEMS, config: CodeConfig | None = None) -> list:
    task = CodePattern(config)
    rng = random.Random(seed)
    return [task.generate(rng, pattern) for _ in range(n)]


def _run_batch(programs: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _HARNESS],
        input=json.dumps(programs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)


def _function2(program: str) -> ast.FunctionDef:
    [node] = [n for n in ast.parse(program).body if isinstance(n, ast.FunctionDef) and n.name == "function2"]
    return node


def _reads_a(func: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "a" for n in ast.walk(func))


@pytest.fixture(scope="module")
def items() -> dict[bool, list]:
    return {True: _drafts(True, 11), False: _drafts(False, 12)}


@pytest.mark.parametrize("pattern", [True, False])
def test_gold_is_what_python_prints(items: dict[bool, list], pattern: bool) -> None:
    drafts = items[pattern]
    outputs = _run_batch([d.meta["program"] for d in drafts])
    assert len(outputs) == len(drafts)
    for draft, printed in zip(drafts, outputs):
        assert printed == draft.answer + "\n", draft.question


@pytest.mark.parametrize("pattern", [True, False])
def test_solve_shortcut_and_pattern_flag(items: dict[bool, list], pattern: bool) -> None:
    task = CodePattern()
    for draft in items[pattern]:
        meta = draft.meta
        assert draft.question == meta["program"]
        assert task.solve(meta) == draft.answer
        assert task.shortcut(meta) == draft.shortcut_answer
        assert (draft.answer == draft.shortcut_answer) is pattern
        assert _reads_a(_function2(meta["program"])) is not pattern
        int(draft.answer)  # integers only
        assert abs(int(draft.answer)) < 10**7


def test_program_shape(items: dict[bool, list]) -> None:
    for draft in items[True][:200] + items[False][:200]:
        program = draft.meta["program"]
        assert program.startswith("import math\n\ndef function1(x):\n")
        assert program.endswith(f"\nx = {draft.meta['input']}\nresult = function2(x, function1(x))\nprint(result)")
        assert not program.endswith("\n")
        assert isinstance(draft.meta["input"], int) and 0 <= draft.meta["input"] <= 20
        assert "/" not in program.replace("//", "") and "." not in program.replace("math.", "")
        function1 = ast.parse(program).body[1]
        assert isinstance(function1, ast.FunctionDef) and function1.name == "function1"
        assert 1 + 2 + 1 <= len(function1.body) <= 1 + 2 * 4 + 1  # init, 2-4 blocks of 1-2 stmts, return


def test_distractor_is_varied(items: dict[bool, list]) -> None:
    seen: set[str] = set()
    for draft in items[True] + items[False]:
        for node in ast.walk(ast.parse(draft.meta["program"]).body[1]):
            if isinstance(node, ast.Attribute):
                seen.add(f"math.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                seen.add(node.func.id)
            elif isinstance(node, (ast.BinOp, ast.BoolOp, ast.UnaryOp)):
                seen.add(type(node.op).__name__)
            else:
                seen.add(type(node).__name__)
    expected = {
        "For",
        "While",
        "If",
        "AugAssign",
        "And",
        "Or",
        "USub",
        "FloorDiv",
        "Mod",
        "Mult",
        "math.gcd",
        "math.isqrt",
        "math.factorial",
        "abs",
        "max",
        "min",
        "range",
    }
    assert expected <= seen, expected - seen


def test_standalone_subprocess() -> None:
    drafts = _drafts(True, 21, 10) + _drafts(False, 22, 10)
    for draft in drafts:
        proc = subprocess.run(
            [sys.executable, "-c", draft.meta["program"]], capture_output=True, text=True, timeout=10, check=True
        )
        assert proc.stdout.strip() == draft.answer


def test_larger_config_still_correct() -> None:
    config = CodeConfig(input_range=(50, 100), distractor_blocks=(5, 6))
    drafts = _drafts(False, 31, 200, config) + _drafts(True, 32, 200, config)
    outputs = _run_batch([d.meta["program"] for d in drafts])
    task = CodePattern(config)
    for draft, printed in zip(drafts, outputs):
        assert printed == draft.answer + "\n"
        assert task.solve(draft.meta) == draft.answer
        assert task.shortcut(draft.meta) == draft.shortcut_answer


def test_generator_never_evaluates_code() -> None:
    tree = ast.parse(Path(code_module.__file__).read_text())
    forbidden = {"eval", "exec", "compile", "__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            assert name not in forbidden, f"line {node.lineno}: {name}()"


def test_deterministic() -> None:
    for pattern in (True, False):
        assert _drafts(pattern, 7, 50) == _drafts(pattern, 7, 50)
    assert _drafts(True, 7, 50) != _drafts(True, 8, 50)


def test_solver_refuses_unsupported_code() -> None:
    task = CodePattern()
    for program in (
        "import os\nprint(1)",
        "print(7 / 2)",
        "x = 'a'\nprint(x)",
        "print(eval('1'))",
        "def f():\n    return [1]\nprint(f())",
        "while True:\n    x = 1",
    ):
        with pytest.raises(ValueError):
            task.solve({"program": program, "input": 0})


@pytest.mark.parametrize(
    "changes",
    [
        {"input_range": (5, 1)},
        {"input_range": (-3, 4)},
        {"distractor_blocks": (0, 2)},
        {"distractor_blocks": (2, 9)},
    ],
)
def test_bad_config(changes: dict) -> None:
    with pytest.raises(IclvsftError):
        CodeConfig(**changes).validate()
    with pytest.raises(IclvsftError):
        CodePattern(CodeConfig(**changes))
