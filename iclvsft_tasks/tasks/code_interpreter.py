"""The independent solver of ``code_pattern``: a tiny interpreter for the subset of Python its
generator emits.

It re-derives every gold from the program text alone, sharing nothing with the generator (which
knows the gold by construction), so a generator bug cannot hide behind a solver that makes the
same mistake. It never calls eval/exec/compile and refuses (ValueError) any construct outside the
subset, and bounds steps and magnitudes so a malformed program cannot run away.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

_MAX_STEPS = 1_000_000  # statements + loop iterations before giving up
_MAX_MAGNITUDE = 10**100  # refuse runaway integers rather than burn memory


def _checked_pow(base: int, exp: int) -> int:
    if exp < 0 or exp > 64:
        raise ValueError(f"unsupported exponent {exp}")
    return base**exp


def _checked_factorial(n: int) -> int:
    if not isinstance(n, int) or n > 1000:
        raise ValueError(f"unsupported factorial argument {n!r}")
    return math.factorial(n)


_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _checked_pow,
}
_CMP_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_BUILTINS: dict[str, Callable[..., Any]] = {"abs": abs, "max": max, "min": min, "range": range}
_MATH: dict[str, Callable[..., Any]] = {
    "gcd": math.gcd,
    "isqrt": math.isqrt,
    "factorial": _checked_factorial,
}


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Function(NamedTuple):
    node: ast.FunctionDef


class Interpreter:
    def __init__(self, tree: ast.AST) -> None:
        if not isinstance(tree, ast.Module):
            raise ValueError(f"expected a module, got {type(tree).__name__}")
        self.tree = tree
        self.globals: dict[str, Any] = {}
        self.imported: set[str] = set()
        self.printed: list[str] = []
        self.steps = 0

    def run(self) -> str:
        try:
            self.exec_body(self.tree.body, self.globals)
        except _Return:
            raise ValueError("'return' outside function") from None
        except (ArithmeticError, TypeError, RecursionError) as err:
            raise ValueError(f"program fails: {err!r}") from err
        return "\n".join(self.printed)

    # statements ------------------------------------------------------------------------------

    def exec_body(self, body: list[ast.stmt], scope: dict[str, Any]) -> None:
        for stmt in body:
            self.exec_stmt(stmt, scope)

    def exec_stmt(self, node: ast.stmt, scope: dict[str, Any]) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise ValueError("program runs too long")
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                raise ValueError("only 'name = value' assignments are supported")
            scope[node.targets[0].id] = self.evaluate(node.value, scope)
        elif isinstance(node, ast.AugAssign):
            if not isinstance(node.target, ast.Name):
                raise ValueError("only 'name op= value' is supported")
            old = self.lookup(node.target.id, scope)
            scope[node.target.id] = self.binop(node.op, old, self.evaluate(node.value, scope))
        elif isinstance(node, ast.Expr):
            self.evaluate(node.value, scope)
        elif isinstance(node, ast.If):
            self.exec_body(node.body if self.evaluate(node.test, scope) else node.orelse, scope)
        elif isinstance(node, ast.For):
            if node.orelse or not isinstance(node.target, ast.Name):
                raise ValueError("only 'for name in range(...)' without else is supported")
            iterable = self.evaluate(node.iter, scope)
            if not isinstance(iterable, range):
                raise ValueError("for loops must iterate over range(...)")
            for value in iterable:
                self.steps += 1
                scope[node.target.id] = value
                self.exec_body(node.body, scope)
        elif isinstance(node, ast.While):
            if node.orelse:
                raise ValueError("while ... else is not supported")
            while self.evaluate(node.test, scope):
                self.steps += 1
                if self.steps > _MAX_STEPS:
                    raise ValueError("program runs too long")
                self.exec_body(node.body, scope)
        elif isinstance(node, ast.Return):
            raise _Return(None if node.value is None else self.evaluate(node.value, scope))
        elif isinstance(node, ast.FunctionDef):
            args = node.args
            if node.decorator_list or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs or args.defaults:
                raise ValueError(f"function {node.name}: only plain positional parameters are supported")
            scope[node.name] = _Function(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name != "math" or alias.asname is not None:
                    raise ValueError(f"only 'import math' is supported, got {alias.name!r}")
                self.imported.add("math")
                scope["math"] = math
        else:
            raise ValueError(f"unsupported statement {type(node).__name__}")

    # expressions -----------------------------------------------------------------------------

    def lookup(self, name: str, scope: dict[str, Any]) -> Any:
        if name in scope:
            return scope[name]
        if name in self.globals:
            return self.globals[name]
        raise ValueError(f"name {name!r} is not defined")

    def binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        func = _BIN_OPS.get(type(op))
        if func is None:
            raise ValueError(f"unsupported operator {type(op).__name__}")
        result = func(left, right)
        if isinstance(result, int) and abs(result) > _MAX_MAGNITUDE:
            raise ValueError("integer too large")
        return result

    def evaluate(self, node: ast.expr, scope: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, bool):
                raise ValueError(f"unsupported constant {node.value!r}")
            return node.value
        if isinstance(node, ast.Name):
            value = self.lookup(node.id, scope)
            if isinstance(value, _Function) or value is math:
                raise ValueError(f"{node.id!r} may only be called")
            return value
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.evaluate(node.left, scope), self.evaluate(node.right, scope))
        if isinstance(node, ast.UnaryOp):
            func = _UNARY_OPS.get(type(node.op))
            if func is None:
                raise ValueError(f"unsupported unary operator {type(node.op).__name__}")
            return func(self.evaluate(node.operand, scope))
        if isinstance(node, ast.Compare):
            left = self.evaluate(node.left, scope)
            for op, comparator in zip(node.ops, node.comparators):
                func = _CMP_OPS.get(type(op))
                if func is None:
                    raise ValueError(f"unsupported comparison {type(op).__name__}")
                right = self.evaluate(comparator, scope)
                if not func(left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BoolOp):  # short-circuit, returning the deciding operand
            is_and = isinstance(node.op, ast.And)
            value: Any = None
            for operand in node.values:
                value = self.evaluate(operand, scope)
                if bool(value) != is_and:
                    return value
            return value
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        raise ValueError(f"unsupported expression {type(node).__name__}")

    def call(self, node: ast.Call, scope: dict[str, Any]) -> Any:
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ValueError("calls take positional arguments only")
        func = node.func
        if isinstance(func, ast.Attribute):
            if not (
                isinstance(func.value, ast.Name)
                and func.value.id == "math"
                and "math" in self.imported
                and func.attr in _MATH
            ):
                raise ValueError(f"unsupported call of .{func.attr}")
            return _MATH[func.attr](*[self.evaluate(arg, scope) for arg in node.args])
        if not isinstance(func, ast.Name):
            raise ValueError(f"unsupported callee {type(func).__name__}")
        args = [self.evaluate(arg, scope) for arg in node.args]
        if func.id in scope or func.id in self.globals:
            target = self.lookup(func.id, scope)
            if not isinstance(target, _Function):
                raise ValueError(f"{func.id!r} is not a function")
            return self.call_function(target.node, args)
        if func.id == "print":
            self.printed.append(" ".join(str(arg) for arg in args))
            return None
        if func.id in _BUILTINS:
            return _BUILTINS[func.id](*args)
        raise ValueError(f"unsupported function {func.id!r}")

    def call_function(self, node: ast.FunctionDef, args: list[Any]) -> Any:
        params = [arg.arg for arg in node.args.args]
        if len(params) != len(args):
            raise ValueError(f"{node.name}() takes {len(params)} arguments, got {len(args)}")
        local = dict(zip(params, args))
        try:
            self.exec_body(node.body, local)
        except _Return as ret:
            return ret.value
        return None


def run_program(program: str | ast.Module) -> str:
    """What the program prints (its source, or an already parsed module), without running Python."""
    return Interpreter(ast.parse(program) if isinstance(program, str) else program).run()
