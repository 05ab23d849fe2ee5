"""Who may ask: API keys on the HTTP API, checked with the real `openai` client and raw aiohttp requests
on localhost.  The pool is a fake (auth never reaches the model); nothing listens on the sink's port, so
a request that got past the keys to Milvus would come back 503, never 200 or 403."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import openai
import pytest
from aiohttp import web
from helpers.app_server import serving

from pipeline.cli import main
from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.runtime.serving import serve
from pipeline.search.api import Api
from pipeline.search.auth import TENANT, ApiKeys, check_exposure, is_loopback, warn_if_open
from pipeline.settings import Settings
from pipeline.settings.serving import ApiSettings
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo

ADMIN = "sk-admin-7f3c9a1e5b2d4c6a8e0f"
ACME = "sk-acme-0d9e8f7a6b5c4d3e2f1a"
GLOBEX = "sk-globex-1a2b3c4d5e6f7a8b9c0d"
SECRETS = (ADMIN, ACME, GLOBEX)
DIM = 8


class FakePool:
    """Unit vectors for any query: enough for /v1/embeddings, which auth decides before."""

    info = ModelInfo(name="fake-embedder", native_dim=DIM, max_length=64, device="cpu", dtype="float32",
                     pooling="mean")  # fmt: skip

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        rows = np.ones((len(queries), DIM), dtype=np.float32) / np.sqrt(DIM)
        return {d: rows[:, :d] / np.linalg.norm(rows[:, :d], axis=1, keepdims=True) for d in dims}


class FakeTokenizer:
    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[1] * len(t.split()) for t in texts]


def _settings(api: dict[str, object]) -> Settings:
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}
    return Settings.model_validate({"milvus": milvus, "api": api})


async def _whoami(request: web.Request) -> web.Response:
    """The tenant the keys put on the request, as a handler of the search path would read it."""
    return web.json_response({"tenant": request[TENANT], "body": await request.json()})


async def _serving(settings: Settings) -> AsyncIterator[str]:
    app = Api(settings, FakePool(), FakeTokenizer(), MilvusSink(settings.milvus, (DIM,))).app()
    app.router.add_post("/v1/whoami", _whoami)
    async with serving(app) as url:
        yield url


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    # One key in settings, two in a file with a comment and a blank line: both sources count.
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# tenant keys\n{ACME} acme\n\n{GLOBEX} globex\n", encoding="utf-8")
    async for served in _serving(_settings({"keys": [ADMIN], "keys_file": str(keys_file)})):
        yield served


def _client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_the_openai_client_with_a_valid_key_is_served_and_a_wrong_key_gets_401(url: str) -> None:
    for key in SECRETS:
        reply = await _client(url, key).embeddings.create(model="fake-embedder", input=["ls", "tar"])
        assert [len(row.embedding) for row in reply.data] == [DIM, DIM]
        assert [m.id async for m in _client(url, key).models.list()] == ["fake-embedder"]
    for wrong in ("sk-wrong", ADMIN + "x", ADMIN[:-1], ACME.upper()):
        with pytest.raises(openai.AuthenticationError) as refused:
            await _client(url, wrong).embeddings.create(model="fake-embedder", input="ls")
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await _client(url, ADMIN[:-1]).models.list()


async def test_raw_requests_missing_key_401_health_open_and_another_tenants_key_403(url: str) -> None:
    search = {"query": "how do I list files", "tenant": "acme"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health") as health:
            assert health.status == 200  # load balancers probe it without a key
        for headers in ({}, {"Authorization": "Basic " + ADMIN}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer " + GLOBEX[:-1]}):  # fmt: skip
            async with session.post(f"{url}/v1/search", json=search, headers=headers) as reply:
                assert reply.status == 401, headers
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await reply.json())["error"]["code"] == "invalid_api_key"
        async with session.get(f"{url}/v1/models") as reply:
            assert reply.status == 401
        # globex's key asks for acme's documents: refused before anything is embedded or searched.
        globex = {"Authorization": f"Bearer {GLOBEX}"}
        async with session.post(f"{url}/v1/search", json=search, headers=globex) as reply:
            assert reply.status == 403
            error = (await reply.json())["error"]
            assert error["code"] == "tenant_not_allowed" and "globex" in error["message"]
        embed = {"input": "ls", "tenant": "acme"}
        async with session.post(f"{url}/v1/embeddings", json=embed, headers=globex) as reply:
            assert reply.status == 403
        # Its own tenant passes, and the handler still reads the body the key check read.
        async with session.post(
            f"{url}/v1/embeddings", json={**embed, "tenant": "globex"}, headers=globex
        ) as ok:
            assert ok.status == 200 and len((await ok.json())["data"]) == 1
        cases = [(GLOBEX, {"x": 1}, "globex"), (ACME, {"tenant": "acme"}, "acme"), (ADMIN, search, None)]
        for key, body, tenant in cases:
            headers = {"Authorization": f"bearer  {key}"}  # the scheme is case-insensitive
            async with session.post(f"{url}/v1/whoami", json=body, headers=headers) as reply:
                assert reply.status == 200 and await reply.json() == {"tenant": tenant, "body": body}


async def test_without_keys_every_route_stays_open() -> None:
    async for url in _serving(_settings({})):
        reply = await _client(url, "anything").embeddings.create(model="fake-embedder", input="ls")
        assert len(reply.data) == 1
        async with aiohttp.ClientSession() as session, session.post(f"{url}/v1/whoami", json={}) as who:
            assert (await who.json())["tenant"] is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "api.example.com"])
async def test_serve_refuses_an_address_beyond_loopback_without_keys(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not is_loopback(host) and not is_loopback("")  # "": every interface, to aiohttp
    with pytest.raises(ConfigError, match="without API keys"):
        check_exposure(ApiSettings(host=host), host)

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve went on to start the query side")

    monkeypatch.setattr("pipeline.runtime.serving.open_query_side", no_ray)
    with pytest.raises(ConfigError, match=r"api\.allow_unauthenticated"):
        await serve(_settings({}), host=host, port=0)
    # Keys, or the explicit opt-out, lift the refusal.
    assert check_exposure(ApiSettings(keys=[ADMIN]), host)
    assert not check_exposure(ApiSettings(allow_unauthenticated=True), host)


def test_the_cli_exits_2_before_asking_milvus_or_ray(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing runs on the configured Milvus/Ray: exit 2 comes before either is asked.
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on '0.0.0.0' without API keys" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_serves_without_keys(host: str) -> None:
    assert is_loopback(host) and not check_exposure(ApiSettings(), host)


def test_opting_out_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "pipeline.search.auth"):
        warn_if_open(check_exposure(ApiSettings(allow_unauthenticated=True), "0.0.0.0"), "0.0.0.0")
    assert "WITHOUT API keys" in caplog.text


async def test_keys_never_appear_in_logs_reprs_or_errors(
    url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        for key in (*SECRETS, ACME[:-1] + "z"):
            headers = {"Authorization": f"Bearer {key}"}
            async with session.post(f"{url}/v1/search", json={"query": "q", "tenant": "x"}, headers=headers):
                pass
    assert "401" in caplog.text and "403" in caplog.text  # the refusals were logged...
    settings = ApiSettings(keys=[ADMIN, f"{ACME} acme"])
    shown = [caplog.text, repr(settings), str(settings), settings.model_dump_json(),
             repr(ApiKeys.from_settings(settings))]  # fmt: skip
    for bad in ([f"{ADMIN} acme extra"], [ADMIN, f"{ADMIN} acme"]):
        with pytest.raises(ConfigError) as refused:
            ApiKeys.from_settings(ApiSettings(keys=bad))
        shown.append(str(refused.value))
    assert "api.keys[0] must be" in shown[-2] and "api.keys[1] repeats" in shown[-1]
    for text in shown:
        for key in SECRETS:  # ...without the key, nor any part of it longer than its prefix
            assert key not in text and key[-12:] not in text, text
