"""code_pattern: a short Python program that prints ``function2(x, function1(x))``.

``function1(x)`` is a distractor (loops, branches, ``math`` calls) whose value is ``a``.
Pattern items: ``function2(z, a)`` ignores ``a``, so the output depends on ``x`` alone and the
distractor can be skipped. Broken items: ``function2`` returns ``f(z) +/- <a-term>`` with a
non-zero a-term, so skipping the distractor (the shortcut: ``f(z)``) gives the wrong answer.

The gold is known by construction: every building block is a pair (source template, native
function computing its effect), so the generating process never runs eval/exec/compile.
``solve`` re-derives the gold independently with the interpreter in ``code_interpreter``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from iclvsft_tasks.tasks.base import INTEGER_ANSWER, Draft, PatternTask, TaskConfig
from iclvsft_tasks.tasks.code_interpreter import run_program

# Redraw function1 when its value leaves this bound: keeps answers short (max_answer_tokens).
_VALUE_LIMIT = 10**6


@dataclasses.dataclass(frozen=True)
class CodeConfig(TaskConfig):
    input_range: tuple[int, int] = (0, 20)  # the literal x the program passes in
    distractor_blocks: tuple[int, int] = (2, 4)  # blocks after function1's init statement

    def validate(self) -> None:
        # Bounded inputs and block counts keep |values| well below _VALUE_LIMIT (rare redraws,
        # short answers); blocks are drawn as distinct kinds, so their count stays small.
        self.check_range("input_range", self.input_range, 0, 100)
        self.check_range("distractor_blocks", self.distractor_blocks, 1, 6)


# --------------------------------------------------------------------------------------------
# Building blocks. ``template.format(*params)`` is the source text (4-space indented lines of
# function1's body); ``effect(x, y, params)`` is the new value of ``y`` computed natively.
# --------------------------------------------------------------------------------------------


class _Block(NamedTuple):
    template: str
    draw: Callable[[random.Random], tuple[Any, ...]]
    effect: Callable[[int, int, tuple[Any, ...]], int]


def _draw_for_add(rng: random.Random) -> tuple[int, int, int]:
    start = rng.randint(0, 2)
    return start, start + rng.randint(2, 5), rng.randint(2, 5)


def _for_mul_mod(x: int, y: int, p: tuple[Any, ...]) -> int:
    n, k, m = p
    for i in range(n):
        y = (y * k + i) % m
    return y


def _while_countdown(x: int, y: int, p: tuple[Any, ...]) -> int:
    n, c, k = p
    for t in range(n, 0, -1):
        y += t * c - x % k
    return y


def _while_halve(x: int, y: int, p: tuple[Any, ...]) -> int:
    k, m = p
    t = abs(y) + k
    while t > m:  # t >= 1 and halves each step: terminates in log2 steps
        t //= 2
        y += 1
    return y


def _for_if(x: int, y: int, p: tuple[Any, ...]) -> int:
    n, c = p
    for i in range(n):
        y = y + i * c if i % 2 == 0 else y - x
    return y


def _if_bool(x: int, y: int, p: tuple[Any, ...]) -> int:
    k, op, d, c = p
    cond = (y > k and x % d != 0) if op == "and" else (y > k or x % d != 0)
    return y - x * c if cond else y + c


_PARITY_SUBJECT = ("x", "y")
_BOOL_OPS = ("and", "or")
_SIGNS = ("+", "-")

_BLOCKS: tuple[_Block, ...] = (
    _Block(  # for over a small range, additive
        "    for i in range({0}, {1}):\n        y = y + i * (x % {2})",
        _draw_for_add,
        lambda x, y, p: y + (p[0] + p[1] - 1) * (p[1] - p[0]) // 2 * (x % p[2]),  # sum(range(a, b))
    ),
    _Block(  # for with multiplicative growth, kept bounded by % m
        "    for i in range({0}):\n        y = (y * {1} + i) % {2}",
        lambda r: (r.randint(2, 5), r.randint(2, 4), r.randint(50, 999)),
        _for_mul_mod,
    ),
    _Block(  # if/else on parity of x or y
        "    if {0} % 2 == 0:\n        y = y + {1}\n    else:\n        y = y * {2} - x",
        lambda r: (r.choice(_PARITY_SUBJECT), r.randint(1, 9), r.randint(2, 3)),
        lambda x, y, p: y + p[1] if (x if p[0] == "x" else y) % 2 == 0 else y * p[2] - x,
    ),
    _Block(  # if/else on a comparison combined with and/or
        "    if y > {0} {1} x % {2} != 0:\n        y = y - x * {3}\n    else:\n        y = y + {3}",
        lambda r: (r.randint(0, 50), r.choice(_BOOL_OPS), r.randint(2, 4), r.randint(2, 4)),
        _if_bool,
    ),
    _Block(  # while counting down a literal (augmented assignments)
        "    t = {0}\n    while t > 0:\n        y += t * {1} - x % {2}\n        t -= 1",
        lambda r: (r.randint(2, 5), r.randint(2, 3), r.randint(2, 5)),
        _while_countdown,
    ),
    _Block(  # while up to the next multiple of k: fewer than k iterations
        "    while y % {0} != 0:\n        y = y + 1",
        lambda r: (r.randint(2, 7),),
        lambda x, y, p: y + (-y) % p[0],
    ),
    _Block(  # while halving a counter
        "    t = abs(y) + {0}\n    while t > {1}:\n        t = t // 2\n        y = y + 1",
        lambda r: (r.randint(1, 20), r.randint(1, 5)),
        _while_halve,
    ),
    _Block(  # for with an if/else inside
        "    for i in range({0}):\n        if i % 2 == 0:\n            y = y + i * {1}\n"
        "        else:\n            y = y - x",
        lambda r: (r.randint(2, 6), r.randint(2, 4)),
        _for_if,
    ),
    _Block(  # math.gcd with x
        "    y = y + math.gcd(x + {0}, {1}) * {2}",
        lambda r: (r.randint(1, 9), r.randint(6, 60), r.randint(2, 3)),
        lambda x, y, p: y + math.gcd(x + p[0], p[1]) * p[2],
    ),
    _Block(  # math.gcd with y, floor division
        "    y = y // {0} + math.gcd(y, {1})",
        lambda r: (r.randint(2, 5), r.randint(6, 60)),
        lambda x, y, p: y // p[0] + math.gcd(y, p[1]),
    ),
    _Block(  # math.isqrt of a non-negative argument (abs)
        "    y = y - math.isqrt(abs(y - x * {0}))",
        lambda r: (r.randint(2, 9),),
        lambda x, y, p: y - math.isqrt(abs(y - x * p[0])),
    ),
    _Block(  # math.isqrt of a square plus a constant
        "    y = math.isqrt(y * y + {0}) + x",
        lambda r: (r.randint(1, 50),),
        lambda x, y, p: math.isqrt(y * y + p[0]) + x,
    ),
    _Block(  # max and abs
        "    y = max(y - {0}, x * {1}) + abs(x - {2})",
        lambda r: (r.randint(1, 30), r.randint(2, 3), r.randint(1, 15)),
        lambda x, y, p: max(y - p[0], x * p[1]) + abs(x - p[2]),
    ),
    _Block(  # min and abs
        "    y = min(y * {0}, x + {1}) - abs(y - {2})",
        lambda r: (r.randint(2, 3), r.randint(5, 60), r.randint(1, 30)),
        lambda x, y, p: min(y * p[0], x + p[1]) - abs(y - p[2]),
    ),
    _Block(  # floor division and modulo with positive literal divisors
        "    y = y // {0} + x % {1} * {2}",
        lambda r: (r.randint(2, 6), r.randint(2, 7), r.randint(2, 5)),
        lambda x, y, p: y // p[0] + x % p[1] * p[2],
    ),
    _Block(  # modulo of a mixed expression
        "    y = (y - x * {0}) % {1}",
        lambda r: (r.randint(2, 9), r.randint(20, 500)),
        lambda x, y, p: (y - x * p[0]) % p[1],
    ),
    _Block(  # small factorial (argument < 7)
        "    y = y {0} math.factorial(x % {1})",
        lambda r: (r.choice(_SIGNS), r.randint(3, 7)),
        lambda x, y, p: y + math.factorial(x % p[1]) if p[0] == "+" else y - math.factorial(x % p[1]),
    ),
    _Block(  # unary minus
        "    y = -y + x * {0}",
        lambda r: (r.randint(2, 4),),
        lambda x, y, p: -y + x * p[0],
    ),
)

_INITS: tuple[_Block, ...] = (
    _Block("    y = x * {0} + {1}", lambda r: (r.randint(2, 5), r.randint(1, 9)), lambda x, y, p: x * p[0] + p[1]),
    _Block("    y = x + {0}", lambda r: (r.randint(1, 9),), lambda x, y, p: x + p[0]),
    _Block("    y = {0} - x", lambda r: (r.randint(1, 20),), lambda x, y, p: p[0] - x),
    _Block("    y = x * x - {0}", lambda r: (r.randint(1, 9),), lambda x, y, p: x * x - p[0]),
)

# function2's a-free part f(z). Every form binds at least as tightly as a top-level + / -, so
# "f(z) + a-term" parses as BinOp(f(z), Add, a-term) and the shortcut can drop the right operand.
_FORMS: tuple[tuple[str, Callable[[int, int, int], int]], ...] = (
    ("z + {0}", lambda z, k, c: z + k),
    ("z - {0}", lambda z, k, c: z - k),
    ("z * {1}", lambda z, k, c: z * c),
    ("z * {1} + {0}", lambda z, k, c: z * c + k),
    ("z * {1} - {0}", lambda z, k, c: z * c - k),
    ("(z + {0}) * {1}", lambda z, k, c: (z + k) * c),
    ("(z - {0}) * {1}", lambda z, k, c: (z - k) * c),
    ("z // {1}", lambda z, k, c: z // c),
    ("z % {1}", lambda z, k, c: z % c),
    ("z * z - {0}", lambda z, k, c: z * z - k),
    ("z * z + {0}", lambda z, k, c: z * z + k),
    ("{0} - z", lambda z, k, c: k - z),
)

# The a-term of a broken item: (template, effect(a, m), draw of m).
_A_TERMS: tuple[tuple[str, Callable[[int, int], int], tuple[int, int]], ...] = (
    ("a", lambda a, m: a, (1, 1)),
    ("a % {0}", lambda a, m: a % m, (3, 9)),
    ("a // {0}", lambda a, m: a // m, (2, 9)),
    ("a * {0}", lambda a, m: a * m, (2, 5)),
)

_PROGRAM = (
    "import math\n\ndef function1(x):\n{body}\n    return y\n\n"
    "def function2(z, a):\n    return {ret}\n\n"
    "x = {x}\nresult = function2(x, function1(x))\nprint(result)"
)


def _function1(rng: random.Random, x: int, n_blocks: int) -> tuple[str, int]:
    """Body text of function1 and its value at x, redrawn until the value is small."""
    while True:
        init = rng.choice(_INITS)
        params = init.draw(rng)
        lines = [init.template.format(*params)]
        y = init.effect(x, 0, params)
        for block in rng.sample(_BLOCKS, n_blocks):  # distinct kinds: more varied programs
            params = block.draw(rng)
            lines.append(block.template.format(*params))
            y = block.effect(x, y, params)
        if abs(y) < _VALUE_LIMIT:
            return "\n".join(lines), y


class CodePattern(PatternTask):
    name = "code_pattern"
    description = "Give the output printed by each Python program. Answer with the printed value only."
    cue = "Output:"
    answer_regex = INTEGER_ANSWER
    max_answer_tokens = 12
    config_class = CodeConfig
    config: CodeConfig

    def generate(self, rng: random.Random, pattern: bool) -> Draft:
        cfg = self.config
        x = rng.randint(*cfg.input_range)
        n_blocks = rng.randint(*cfg.distractor_blocks)
        body, a = _function1(rng, x, n_blocks)
        while not pattern and a == 0:  # every a-term of a == 0 vanishes: redraw the distractor
            body, a = _function1(rng, x, n_blocks)
        form, f = rng.choice(_FORMS)
        k, c = rng.randint(1, 9), rng.randint(2, 5)
        ret = form.format(k, c)
        short = f(x, k, c)
        gold = short
        if not pattern:
            while True:  # a != 0 here, so "a" and "a * m" always qualify: terminates quickly
                template, term, bounds = rng.choice(_A_TERMS)
                m = rng.randint(*bounds)
                value = term(a, m)
                if value != 0:
                    break
            sign = rng.choice(_SIGNS)
            ret = f"{ret} {sign} {template.format(m)}"
            gold = short + value if sign == "+" else short - value
        program = _PROGRAM.format(body=body, ret=ret, x=x)
        return Draft(program, str(gold), str(short), {"program": program, "input": x})

    def solve(self, meta: dict[str, Any]) -> str:
        return run_program(meta["program"])

    def shortcut(self, meta: dict[str, Any]) -> str:
        tree = ast.parse(meta["program"])
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "function2":
                ret = node.body[-1]
                if not isinstance(ret, ast.Return) or ret.value is None:
                    raise ValueError("function2 must end in 'return <expression>'")
                value = ret.value
                if (
                    isinstance(value, ast.BinOp)
                    and isinstance(value.op, (ast.Add, ast.Sub))
                    and any(isinstance(n, ast.Name) and n.id == "a" for n in ast.walk(value.right))
                ):
                    ret.value = value.left  # skip the distractor: drop the term that reads a
                break
        else:
            raise ValueError("program has no function2")
        return run_program(tree)
