"""LoRA adapters on the HTTP API, driven by the real `openai` client: ``model`` picks an adapter
(``<model>:<adapter>`` or the adapter's name), /v1/models lists them, an unknown one is a 400."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest
from helpers.app_server import serving
from helpers.fakes import ModelQueryPool
from helpers.models import write_lora_adapter

from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.search.api import Api
from pipeline.search.model_ids import UnknownModel, requested_adapter
from pipeline.settings import Settings
from workers.errors import UnknownAdapter
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings

pytest.importorskip("peft")

TEXTS = ["hello world", "legal terms apply to this contract"]
SERVED = "tiny-qwen3"


@pytest.fixture(scope="module")
def adapters(tiny_qwen3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("api-adapters")
    return {name: str(write_lora_adapter(tiny_qwen3_path, root / name, seed=40 + i)) for i, name in
            enumerate(["legal", "medical"])}  # fmt: skip


def load(path: Path, **settings: object) -> EmbeddingModel:
    values = {"name_or_path": str(path), "dtype": "float32", **settings}
    return EmbeddingModel.load(ModelSettings.model_validate(values), device="cpu")


@pytest.fixture(scope="module")
def model(tiny_qwen3_path: Path, adapters: dict[str, str]) -> EmbeddingModel:
    return load(tiny_qwen3_path, adapters=adapters)


@pytest.fixture
async def url(model: EmbeddingModel) -> AsyncIterator[str]:
    # Nothing listens on the sink's port: these requests never reach Milvus.
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}
    settings = Settings.model_validate({"milvus": milvus, "api": {"model_name": SERVED}})
    sink = MilvusSink(settings.milvus, (64,))
    async with serving(Api(settings, ModelQueryPool(model), model.tokenizer, sink).app()) as served:
        yield served


def rows(reply: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    return np.array([item.embedding for item in reply.data], dtype=np.float32)


async def test_the_model_field_picks_an_adapter_and_each_gives_its_own_vectors(
    url: str, tiny_qwen3_path: Path, adapters: dict[str, str]
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    listed = [m.id for m in (await client.models.list()).data]
    assert listed == [SERVED, f"{SERVED}:legal", f"{SERVED}:medical"]
    base = load(tiny_qwen3_path).embed(TEXTS, [64])[64]
    for name, folder in adapters.items():
        merged = load(tiny_qwen3_path, lora_path=folder).embed(TEXTS, [64])[64]
        for model in (f"{SERVED}:{name}", name):
            reply = await client.embeddings.create(model=model, input=TEXTS)
            assert reply.model == f"{SERVED}:{name}"
            assert float(np.min(np.sum(rows(reply) * merged, axis=1))) >= 0.9999
    reply = await client.embeddings.create(model=SERVED, input=TEXTS)
    assert reply.model == SERVED
    np.testing.assert_allclose(rows(reply), base, atol=1e-5)


async def test_an_unknown_adapter_is_a_400_and_an_unknown_model_a_404(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model=f"{SERVED}:nope", input=TEXTS)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "adapter_not_found" and error["param"] == "model"
    assert "'nope'" in error["message"] and "legal" in error["message"]
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="another-model:legal", input=TEXTS)


def test_model_ids_are_parsed_without_guessing() -> None:
    loaded = {"legal", "medical"}
    assert requested_adapter(None, SERVED, loaded) is None
    assert requested_adapter(SERVED, SERVED, loaded) is None
    assert requested_adapter(f"{SERVED}:legal", SERVED, loaded) == "legal"
    assert requested_adapter("medical", SERVED, loaded) == "medical"
    with pytest.raises(UnknownAdapter):
        requested_adapter(f"{SERVED}:nope", SERVED, loaded)
    for other in ("nope", "other:legal", 3, ["legal"]):
        with pytest.raises(UnknownModel):
            requested_adapter(other, SERVED, loaded)
