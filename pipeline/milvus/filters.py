"""Search filters: a small JSON language over ``doc_id`` and the ``metadata`` JSON field, validated
and compiled into a Milvus boolean expression.

A filter is a JSON object; its keys are ANDed.  A key is a field — ``doc_id`` or a metadata path
``metadata.a.b`` (each key a safe identifier, ``[A-Za-z_][A-Za-z0-9_]*``, at most 64 characters) —
or a combinator:

* ``{"doc_id": "a"}``, ``{"metadata.lang": "de"}``: equality with a string, number or bool;
* ``{"metadata.year": {"gte": 2020, "lt": 2025}}``: operators ``eq ne gt gte lt lte`` (one value),
  ``in nin`` (a non-empty list of values), ``contains`` (a metadata list holds the value);
* ``{"and": [f, ...]}``, ``{"or": [f, ...]}``, ``{"not": f}``.

Guarantee: user input never becomes expression syntax.  Field paths are checked against the
identifier pattern and emitted quoted; every value is emitted by :func:`literal` (strings through
:func:`pipeline.milvus.expr.quote`, numbers as finite decimal literals, bools as ``true``/``false``),
so a value matches only itself — ``" or 1==1 or "`` is a string like any other.  Anything else (an
unknown operator or field, ``null``, NaN, a nested object as a value) is a :class:`FilterError`
naming what is wrong, before Milvus is asked.

Portability: milvus-lite refuses ``in`` on a JSON path, so ``in``/``nin`` on metadata compile to
``==`` terms joined by ``or``; ``doc_id in [...]`` stays a plain ``in``.  ``ne`` and ``not`` also
match rows without the key (Milvus 2.3 has no null literal, so ``null`` is refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.milvus.expr import quote

MAX_DEPTH = 8
"""Nesting of and/or/not a filter may have."""
MAX_VALUES = 1024
"""Values of one ``in``/``nin`` list."""
MAX_TERMS = 4096
"""Comparisons of one filter (each value of an ``in`` list counts)."""

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_COMPARE = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_LISTS = ("in", "nin")
_OPERATORS = (*_COMPARE, *_LISTS, "contains")
_INT64 = 2**63


class FilterError(ValueError):
    """A filter that is not valid: the message says what and where (a JSON-pointer-like path)."""


def literal(value: object, where: str) -> str:
    """``value`` (str, int, float, bool) as a Milvus literal that decodes to exactly it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise FilterError(f"{where}: integer {value} is outside int64")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{where}: numbers must be finite, got {value}")
        return repr(value)
    if value is None:
        raise FilterError(f"{where}: null is not supported (Milvus 2.3 expressions have no null)")
    raise FilterError(f"{where}: a value must be a string, number or bool, got {type(value).__name__}")


def field_path(key: str, where: str) -> str:
    """The expression for field ``key``: ``doc_id``, or ``metadata["a"]["b"]`` for ``metadata.a.b``."""
    if key == "doc_id":
        return "doc_id"
    head, _, rest = key.partition(".")
    parts = rest.split(".") if rest else []
    if head != "metadata" or not parts:
        raise FilterError(
            f"{where}: unknown field {key!r}; filter on 'doc_id' or 'metadata.<key>[.<key>...]', "
            f"or combine with 'and', 'or', 'not'"
        )
    for part in parts:
        if not _KEY.fullmatch(part):
            raise FilterError(
                f"{where}: metadata key {part!r} must match [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)"
            )
    return "metadata" + "".join(f"[{quote(part)}]" for part in parts)


def compile_filter(spec: object) -> str:
    """The Milvus boolean expression of filter ``spec`` (parsed JSON); FilterError if invalid."""
    return _Compiler().filter(spec, "filter", 0)


class _Compiler:
    def __init__(self) -> None:
        self.terms = 0

    def filter(self, spec: object, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise FilterError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if not isinstance(spec, Mapping) or not spec:
            raise FilterError(f"{where}: a filter must be a non-empty JSON object")
        terms = [self.key(str(key), value, f"{where}.{key}", depth) for key, value in spec.items()]
        return _join(terms, "and")

    def key(self, key: str, value: object, where: str, depth: int) -> str:
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{where}: must be a non-empty list of filters")
            return _join([self.filter(f, f"{where}[{i}]", depth + 1) for i, f in enumerate(value)], key)
        if key == "not":
            return f"not ({self.filter(value, where, depth + 1)})"
        path = field_path(key, where)
        if not isinstance(value, Mapping):
            return self.compare(path, "eq", value, where)
        if not value:
            raise FilterError(f"{where}: an operator object needs at least one of {', '.join(_OPERATORS)}")
        return _join([self.compare(path, str(op), v, f"{where}.{op}") for op, v in value.items()], "and")

    def compare(self, path: str, op: str, value: object, where: str) -> str:
        if op not in _OPERATORS:
            raise FilterError(f"{where}: unknown operator {op!r}; the operators are {', '.join(_OPERATORS)}")
        if op in _LISTS:
            return self.members(path, op, value, where)
        self.count(1, where)
        if op == "contains":
            if path == "doc_id":
                raise FilterError(f"{where}: 'contains' applies to metadata lists, not doc_id")
            return f"json_contains({path}, {literal(value, where)})"
        return f"{path} {_COMPARE[op]} {literal(value, where)}"

    def members(self, path: str, op: str, values: object, where: str) -> str:
        if not isinstance(values, list) or not values:
            raise FilterError(f"{where}: must be a non-empty list of values")
        if len(values) > MAX_VALUES:
            raise FilterError(f"{where}: at most {MAX_VALUES} values, got {len(values)}")
        self.count(len(values), where)
        literals = [literal(v, f"{where}[{i}]") for i, v in enumerate(values)]
        if path == "doc_id":
            return f"doc_id {'not in' if op == 'nin' else 'in'} [{', '.join(literals)}]"
        # milvus-lite refuses `in` on a JSON path: the same set as equalities.
        anyof = " or ".join(f"{path} == {lit}" for lit in literals)
        return f"not ({anyof})" if op == "nin" else f"({anyof})"

    def count(self, n: int, where: str) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise FilterError(f"{where}: the filter has more than {MAX_TERMS} comparisons")


def _join(terms: Sequence[str], op: str) -> str:
    return terms[0] if len(terms) == 1 else f" {op} ".join(f"({t})" for t in terms)


def parse_filter(spec: Any) -> str | None:
    """:func:`compile_filter` of ``spec``, None for None (no filter)."""
    return None if spec is None else compile_filter(spec)
