"""Exact arithmetic over a parsed expression: the `calculator` tool.

The expression is parsed with `ast` and only numbers, + - * / // % **, unary signs and parentheses
are evaluated, as `fractions.Fraction`, so 0.1 + 0.2 is exactly 0.3 and 1/3 stays a third. Nothing
is ever passed to `eval`; names, calls, attributes and everything else are refused.
"""

from __future__ import annotations

import ast
import operator
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

MAX_CHARS = 200
MAX_EXPONENT = 1000
MAX_DIGITS = 400

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# thousands separators ("1,200") and a few symbols small models write
_GROUPED = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_REPLACE = {"×": "*", "÷": "/", "−": "-", "^": "**", "x": "*"}


def ungroup(text: str) -> str:
    """Thousands separators dropped: "1,150" -> "1150" (shared with the loop and the support check)."""
    return _GROUPED.sub("", text)


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value cannot be computed."""


def _normalise(expression: str) -> str:
    text = ungroup(expression.strip())
    text = re.sub(r"(?<=\d)\s*%", "/100", text)  # "15%" -> 15/100
    text = re.sub(r"(?<=[\d)])\s*x\s*(?=[\d(])", "*", text)  # "3 x 4"
    for a, b in _REPLACE.items():
        if a != "x":
            text = text.replace(a, b)
    return text


def _size_ok(value: Fraction) -> None:
    if len(str(value.numerator)) > MAX_DIGITS or len(str(value.denominator)) > MAX_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        # the source text of a float is kept exact: Fraction("0.1"), not Fraction(0.1)
        return Fraction(Decimal(repr(node.value))) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1:
                raise CalculatorError("exponents must be whole numbers (the result would not be exact)")
            if abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponents are limited to ±{MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise CalculatorError("division by zero")
            result = left ** int(right)
        else:
            op = _BINARY.get(type(node.op))
            if op is None:
                raise CalculatorError(f"operator {type(node.op).__name__} is not supported; use + - * / // % **")
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
                raise CalculatorError("division by zero")
            result = Fraction(op(left, right))
        _size_ok(result)
        return result
    raise CalculatorError(f"only numbers, + - * / // % ** and parentheses are allowed (found {type(node).__name__})")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or CalculatorError saying what is wrong."""
    if not expression or not expression.strip():
        raise CalculatorError("the expression is empty")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    text = _normalise(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    return _eval(tree)


def format_value(value: Fraction) -> str:
    """Whole numbers as integers, terminating fractions as exact decimals, others as a fraction
    with a 12-digit decimal approximation."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:  # terminating decimal: exact
        try:
            text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
        except InvalidOperation:
            text = str(value)
        return text.rstrip("0").rstrip(".") if "." in text else text
    approx = format(Decimal(value.numerator) / Decimal(value.denominator), ".12g")
    return f"{value.numerator}/{value.denominator} (about {approx})"


def calculate(expression: str) -> str:
    return format_value(evaluate(expression))
