"""The command line: arguments to calls, exceptions to exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no local stack here (stack.data_dir is relative)


LIMIT = "hits per query, over Milvus' limit of 16384 per search"


@pytest.mark.timeout(60)  # refused before Ray, the model or Milvus are started
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--top-k", "20000"], {}, f"top_k 20000 = 20000 {LIMIT}: lower top_k"),
        (
            ["--top-k", "400", "--funnel"],
            {},
            f"top_k 400 × funnel factor 50 = 20000 {LIMIT}: lower top_k or the funnel factor",
        ),
        (
            ["--funnel", "--per-document"],
            {"PIPELINE_SEARCH__FUNNEL_FACTOR": "1000"},
            f"top_k 5 × 4 (per-document over-fetch) × funnel factor 1000 = 20000 {LIMIT}: lower top_k "
            "or the funnel factor",
        ),
        (["--top-k", "0"], {}, "top_k must be at least 1, got 0"),
        (
            ["--filter", '{"text": "x"}'],
            {},
            "filter.text: unknown field 'text'; filter on 'doc_id' or 'metadata.<key>[.<key>...]', or "
            "combine with 'and', 'or', 'not'",
        ),
        (
            ["--filter", '{"doc_id": {"like": "a"}}'],
            {},
            "filter.doc_id.like: unknown operator 'like'; the "
            "operators are eq, ne, gt, gte, lt, lte, in, nin, contains",
        ),
        (
            [],
            {"PIPELINE_MILVUS__TENANT_FIELD": "org"},
            "every search must name its tenant (milvus.tenant_field is 'org'): search --tenant T, 'tenant' "
            "in the /v1/search body, or an API key bound to a tenant",
        ),
        (
            ["--tenant", "acme"],
            {},
            "this deployment has no tenants (milvus.tenant_field is unset), so a search cannot name one",
        ),
    ],
)
def test_a_search_milvus_cannot_run_exits_2_saying_why(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["search", "list a directory", *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
