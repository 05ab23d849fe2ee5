"""Tenant isolation end to end: documents of two tenants (near-identical texts, so that any leak would
rank first) are ingested from the real broker through the Ray pool into Milvus Lite with
``milvus.tenant_field`` set; events without a usable tenant are dead-lettered (``missing_tenant``).
Then searches try to reach the other tenant — by its metadata in a filter, its document ids, an ``or``
around both, the funnel's rescoring fetch, another tenant in the body of a request whose key is bound,
and no tenant at all — through the library call, the ``search`` verb and ``POST /v1/search`` with keys.
Every hit is asserted to be the asking tenant's, and each tenant is shown to find its own documents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from helpers.app_server import serving
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.settings import private_settings, write_toml

from pipeline.cli import main
from pipeline.runtime.assemble import Runtime, build_runtime
from pipeline.search.api import Api
from pipeline.search.auth import ApiKeys
from pipeline.search.replicas import search
from pipeline.settings import Settings

QUERY = "how do I list the files in a directory"
DOCS = {
    "acme": {
        "acme-ls": "To list the files in a directory, run ls -la in a terminal.",
        "acme-tar": "tar packs many files into one archive and extracts them again.",
        "acme-ssh": "ssh opens a shell on a remote machine over an encrypted connection.",
    },
    "globex": {
        "globex-ls": "Run ls -la in a terminal to list the files of a directory.",
        "globex-zip": "zip compresses files into an archive.",
        "globex-df": "df shows how much disk space is free on each mounted file system.",
    },
}
OWNER = {doc: tenant for tenant, docs in DOCS.items() for doc in docs}
NO_TENANT = {b"orphan": {}, b"numbered": {"org": 42}, b"blank": {"org": ""}}
pytestmark = pytest.mark.asyncio(loop_scope="module")  # the ingested runtime is shared by the tests
ACME, GLOBEX, ADMIN = "sk-acme-5c1f0e2d9b8a", "sk-globex-7e6d5c4b3a29", "sk-admin-0a1b2c3d4e5f"


def _records() -> list[Record]:
    events = [{"id": doc, "text": text, "metadata": {"org": OWNER[doc], "lang": "en"}}
              for docs in DOCS.values() for doc, text in docs.items()]  # fmt: skip
    events += [
        {"id": key.decode(), "text": "ls lists files", "metadata": meta} for key, meta in NO_TENANT.items()
    ]
    return [Record(str(e["id"]).encode(), json.dumps(e).encode()) for e in events]


class _Tokens:
    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[1] * len(t.split()) for t in texts]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingested(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> AsyncIterator[tuple[Settings, Runtime]]:
    settings = private_settings(
        kafka_bootstrap,
        milvus_lite_uri,
        minilm_path,
        name="tenants",
        dims=(384, 64),
        milvus={"tenant_field": "org"},
    )
    runtime = await build_runtime(settings)
    try:
        await produce(settings.kafka, _records())
        stats = await runtime.new_consumer().run(until_idle_s=2.0)
        assert stats.events == len(DOCS["acme"]) + len(DOCS["globex"]) + len(NO_TENANT)
        await assert_all_committed(settings.kafka)
        yield settings, runtime
    finally:
        runtime.close()


def _docs(hits: list[dict[str, Any]] | list[Any]) -> list[str]:
    return [h["doc_id"] if isinstance(h, dict) else h.doc_id for h in hits]


async def test_events_without_a_tenant_are_dead_lettered_never_defaulted(
    ingested: tuple[Settings, Runtime],
) -> None:
    settings, runtime = ingested
    dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
    assert sorted(d.key for d in dead) == sorted(NO_TENANT)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["reason_code"] == "missing_tenant" and "'org'" in headers["error"], headers
    rows = await asyncio.to_thread(runtime.sink.fetch_all, 384)
    assert {(r["doc_id"], r["metadata"]["org"]) for r in rows} == set(OWNER.items())


@pytest.mark.parametrize("options", [{}, {"dim": 64, "funnel_factor": 4}, {"per_document": True}])
async def test_the_library_search_returns_only_the_named_tenants_documents(
    ingested: tuple[Settings, Runtime], options: dict[str, Any]
) -> None:
    settings, runtime = ingested
    for tenant, docs in DOCS.items():
        [result] = await search(
            settings, runtime.pool, runtime.sink, [QUERY], top_k=10, tenant=tenant, **options
        )
        assert sorted(_docs(result.hits)) == sorted(docs) and _docs(result.hits)[0].endswith("-ls"), tenant
        assert {h.metadata["org"] for h in result.hits} == {tenant}


async def test_the_search_verb_needs_a_tenant_and_returns_only_its_documents(
    ingested: tuple[Settings, Runtime], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = ingested
    config = str(write_toml(settings, tmp_path / "pipeline.toml"))
    assert await asyncio.to_thread(main, ["--config", config, "search", QUERY]) == 2
    assert "every search must name its tenant" in capsys.readouterr().err
    argv = ["--config", config, "search", "--tenant", "globex", "--top-k", "10", QUERY]
    assert await asyncio.to_thread(main, argv) == 0
    printed = capsys.readouterr().out
    shown = {
        line.split()[2].split("#")[0]
        for line in printed.splitlines()
        if line.startswith("  ") and "#" in line
    }
    assert shown == set(DOCS["globex"]), printed


@pytest_asyncio.fixture(loop_scope="module")
async def api(ingested: tuple[Settings, Runtime]) -> AsyncIterator[str]:
    settings, runtime = ingested
    keys = ApiKeys.parse([("a", f"{ACME} acme"), ("g", f"{GLOBEX} globex"), ("x", ADMIN)])
    async with serving(Api(settings, runtime.pool, _Tokens(), runtime.sink, keys=keys).app()) as url:
        yield url


async def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/search", json=body, headers=headers) as reply,
    ):
        return reply.status, await reply.json()


ATTEMPTS = {  # what a request of a key bound to acme adds to try to reach globex's documents
    "their-metadata": {"filter": {"metadata.org": "globex"}},
    "their-ids": {"filter": {"doc_id": {"in": list(DOCS["globex"])}}},
    "or-around-both": {
        "filter": {"or": [{"metadata.org": "globex"}, {"doc_id": {"in": list(DOCS["globex"])}}]}
    },
    "not-mine": {"filter": {"not": {"metadata.org": "acme"}}},
    "funnel-their-ids": {"dim": 64, "funnel_factor": 4, "filter": {"doc_id": {"in": list(DOCS["globex"])}}},
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
async def test_a_key_bound_to_a_tenant_cannot_reach_another_tenant_by_filter(api: str, attempt: str) -> None:
    status, body = await _post(api, ACME, {"query": QUERY, "top_k": 10, **ATTEMPTS[attempt]})
    assert status == 200, body
    assert _docs(body["data"][0]["hits"]) == []


async def test_keys_and_the_tenant_in_the_body(api: str) -> None:
    # The bound key, with and without naming its own tenant: its documents, best first.
    for body in ({"query": QUERY, "top_k": 10}, {"query": QUERY, "top_k": 10, "tenant": "acme"}):
        status, reply = await _post(api, ACME, body)
        hits = reply["data"][0]["hits"]
        assert status == 200 and _docs(hits)[0] == "acme-ls" and sorted(_docs(hits)) == sorted(DOCS["acme"])
        assert {h["metadata"]["org"] for h in hits} == {"acme"}
    # A raw request with acme's key naming globex (or a list holding it): 403, nothing searched.
    for other in ("globex", ["globex"], ["acme", "globex"]):
        status, reply = await _post(api, ACME, {"query": QUERY, "tenant": other})
        assert status == 403 and reply["error"]["code"] == "tenant_not_allowed", reply
    # A key bound to no tenant must name one, and sees only that one.
    status, reply = await _post(api, ADMIN, {"query": QUERY, "top_k": 10})
    assert status == 400 and reply["error"]["code"] == "tenant_required", reply
    status, reply = await _post(api, ADMIN, {"query": QUERY, "top_k": 10, "tenant": "globex"})
    assert status == 200 and sorted(_docs(reply["data"][0]["hits"])) == sorted(DOCS["globex"])
    for bad in ("", 7):
        status, reply = await _post(api, ADMIN, {"query": QUERY, "tenant": bad})
        assert status == 400 and "non-empty string" in reply["error"]["message"], reply
    # globex's own key sees globex's.
    status, reply = await _post(api, GLOBEX, {"query": QUERY, "top_k": 10})
    assert status == 200 and sorted(_docs(reply["data"][0]["hits"])) == sorted(DOCS["globex"])
