"""The filter language compiles to the expected Milvus expressions and refuses what it does not know;
values are literals that decode to themselves (proven on real Milvus in test_filter_injection.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.milvus.filters import MAX_DEPTH, MAX_VALUES, FilterError, compile_filter, parse_filter


@pytest.mark.parametrize(
    ("spec", "expr"),
    [
        ({"doc_id": "a"}, 'doc_id == "a"'),
        ({"doc_id": {"in": ["a", "b"]}}, 'doc_id in ["a", "b"]'),
        ({"doc_id": {"nin": ["a"]}}, 'doc_id not in ["a"]'),
        ({"metadata.lang": "de"}, 'metadata["lang"] == "de"'),
        (
            {"metadata.year": {"gte": 2020, "lt": 2025}},
            '(metadata["year"] >= 2020) and (metadata["year"] < 2025)',
        ),
        ({"metadata.a.b_2": 1.5}, 'metadata["a"]["b_2"] == 1.5'),
        ({"metadata.flag": True}, 'metadata["flag"] == true'),
        ({"metadata.flag": {"ne": False}}, 'metadata["flag"] != false'),
        ({"metadata.lang": {"in": ["de", "fr"]}}, '(metadata["lang"] == "de" or metadata["lang"] == "fr")'),
        ({"metadata.lang": {"nin": ["de"]}}, 'not (metadata["lang"] == "de")'),
        ({"metadata.tags": {"contains": "x"}}, 'json_contains(metadata["tags"], "x")'),
        ({"not": {"doc_id": "a"}}, 'not (doc_id == "a")'),
        (
            {"or": [{"doc_id": "a"}, {"metadata.lang": "de", "metadata.year": 2020}]},
            '(doc_id == "a") or ((metadata["lang"] == "de") and (metadata["year"] == 2020))',
        ),
        ({"and": [{"doc_id": "a"}], "metadata.n": -3}, '(doc_id == "a") and (metadata["n"] == -3)'),
    ],
)
def test_filters_compile_to_milvus_expressions(spec: dict[str, Any], expr: str) -> None:
    assert compile_filter(json.loads(json.dumps(spec))) == expr


@pytest.mark.parametrize(
    "value",
    [
        '" or 1==1 or "',
        'a\\" or doc_id != "',
        "back\\slash\\",
        "line\nbreak\r",
        "ünï€ødé 漢字 🙂",
        "'single'",
        "",
    ],
)
def test_a_value_is_one_quoted_literal_whatever_it_holds(value: str) -> None:
    expr = compile_filter({"doc_id": value})
    assert expr.startswith('doc_id == "') and expr.endswith('"')
    body = expr[len('doc_id == "') : -1]
    # Inside the literal every quote and backslash is escaped, and no raw line break is left: the
    # literal cannot end early, so the value can never become syntax.
    unescaped = body.replace("\\\\", "").replace('\\"', "").replace("\\n", "").replace("\\r", "")
    assert '"' not in unescaped and "\\" not in unescaped and "\n" not in body and "\r" not in body


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "filter: a filter must be a non-empty JSON object"),
        ([], "filter: a filter must be a non-empty JSON object"),
        ({"text": "x"}, "filter.text: unknown field 'text'"),
        ({"metadata": "x"}, "filter.metadata: unknown field 'metadata'"),
        ({"metadata.la ng": "x"}, "metadata key 'la ng' must match"),
        ({'metadata.a"]': "x"}, "metadata key 'a\"]' must match"),
        ({"metadata.a..b": "x"}, "metadata key '' must match"),
        ({"metadata.": "x"}, "unknown field 'metadata.'"),
        ({"metadata." + "k" * 65: "x"}, "at most 64 characters"),
        ({"doc_id": {"like": "a%"}}, "filter.doc_id.like: unknown operator 'like'"),
        ({"doc_id": {}}, "filter.doc_id: an operator object needs at least one of"),
        ({"doc_id": None}, "null is not supported"),
        ({"doc_id": {"in": []}}, "filter.doc_id.in: must be a non-empty list of values"),
        ({"doc_id": {"in": "a"}}, "filter.doc_id.in: must be a non-empty list of values"),
        ({"doc_id": {"in": ["a"] * (MAX_VALUES + 1)}}, f"at most {MAX_VALUES} values"),
        (
            {"doc_id": {"in": ["a", {"b": 1}]}},
            "filter.doc_id.in[1]: a value must be a string, number or bool",
        ),
        ({"metadata.x": ["a"]}, "a value must be a string, number or bool, got list"),
        ({"metadata.x": float("nan")}, "numbers must be finite"),
        ({"metadata.x": 2**63}, "outside int64"),
        ({"doc_id": {"contains": "a"}}, "'contains' applies to metadata lists"),
        ({"or": []}, "filter.or: must be a non-empty list of filters"),
        ({"and": {"doc_id": "a"}}, "filter.and: must be a non-empty list of filters"),
        ({"or": [{"doc_id": "a"}, 3]}, "filter.or[1]: a filter must be a non-empty JSON object"),
    ],
)
def test_invalid_filters_are_refused_saying_what_and_where(spec: Any, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(spec)
    assert message in str(caught.value)


def test_nesting_and_size_are_bounded() -> None:
    spec: dict[str, Any] = {"doc_id": "a"}
    for _ in range(MAX_DEPTH + 1):
        spec = {"not": spec}
    with pytest.raises(FilterError, match=f"nested deeper than {MAX_DEPTH} levels"):
        compile_filter(spec)
    many = {"or": [{"doc_id": {"in": [str(i) for i in range(MAX_VALUES)]}} for _ in range(5)]}
    with pytest.raises(FilterError, match="more than 4096 comparisons"):
        compile_filter(many)
    assert parse_filter(None) is None
