"""The runtime's chunker keeps token ids for the embedder actors, unless off or remote."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.runtime.assemble import make_chunker
from pipeline.settings import Settings
from workers.errors import ConfigError
from workers.model.info import ModelInfo
from workers.model.tokenizer import load_text_tokenizer
from workers.settings import ModelSettings


@pytest.mark.parametrize(
    ("overrides", "keeps_ids"),
    [
        ({"consumer": {"send_token_ids": True}}, True),
        ({}, False),
        (
            {
                "consumer": {"send_token_ids": True},
                "embedder": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1"},
            },
            False,
        ),
    ],
    ids=["actors", "off-by-default", "remote-endpoint"],
)
def test_token_ids_are_kept_only_for_the_actors(
    tiny_qwen3_path: Path, overrides: dict[str, dict[str, object]], keeps_ids: bool
) -> None:
    model = ModelSettings(name_or_path=str(tiny_qwen3_path), max_length=64)
    settings = Settings.model_validate({"model": model.model_dump(), **overrides})
    tokenizer = load_text_tokenizer(model)
    info = ModelInfo(name="tiny", native_dim=64, max_length=64, device="cpu", dtype="float32", pooling="last")
    chunks = make_chunker(settings, tokenizer, info).split("Kafka events become vectors. " * 20)
    assert len(chunks) > 1
    for chunk in chunks:
        if keeps_ids:
            assert (
                chunk.token_ids is not None
                and chunk.token_ids.tolist() == tokenizer.token_ids_batch([chunk.text])[0].tolist()
            )
        else:
            assert chunk.token_ids is None


def test_a_chunk_limit_past_the_model_is_refused(tiny_qwen3_path: Path) -> None:
    model = ModelSettings(name_or_path=str(tiny_qwen3_path), max_length=64)
    settings = Settings.model_validate({"model": model.model_dump(), "chunking": {"max_tokens": 64}})
    info = ModelInfo(name="tiny", native_dim=64, max_length=64, device="cpu", dtype="float32", pooling="last")
    with pytest.raises(ConfigError, match="does not fit the model"):
        make_chunker(settings, load_text_tokenizer(model), info)
