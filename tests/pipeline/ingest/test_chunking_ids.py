"""The chunker keeps each chunk's token ids (``keep_token_ids``), and units send them to the embedder.

On Qwen3's real tokenizer: every chunk's ids are the tokenizer's ids of its text (framed, with an
instruction) on its own, ``token_count`` of them; the chunks are the ones cut without ids; a unit's
model inputs carry those ids, and a document dead-lettered for poison is found by its text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiokafka import TopicPartition
from helpers.fakes import FakeRecord, WordSpans
from helpers.text_strategies import UNICODE_TEXT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.chunking import Chunk, Chunker
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.units import build_unit
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.errors import ConfigError
from workers.model.inputs import TokenizedText, texts_of
from workers.model.tokenizer import TextTokenizer
from workers.prompts import format_input
from workers.settings import ModelSettings

LIMIT = 64
TASK = "Given a web search query, retrieve relevant passages that answer the query"
ZH = "# 向量检索\n\n向量检索把文本变成高维向量。相似的文本彼此靠近！你遇到过这样的问题吗？\n\n" * 6
MIXED = "## Mixed\n\nМосква — столица России! 東京は日本の首都です。Größe, café 😀👩‍👩‍👧.\n\n" * 5
TP = TopicPartition("documents", 0)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(embedding_tokenizer(), max_length=LIMIT, pad_token_id=EOS_ID)


def frame(text: str) -> str:
    return format_input(ModelSettings(), text, TASK)


def assert_ids_are_the_tokenizers(tokenizer: TextTokenizer, inputs: list[str], chunks: list[Chunk]) -> None:
    for text, chunk, ids in zip(inputs, chunks, tokenizer.token_ids_batch(inputs), strict=True):
        assert chunk.token_ids is not None, text
        assert chunk.token_ids.tolist() == ids.tolist() and len(ids) == chunk.token_count


@pytest.mark.parametrize(
    "text", [ZH, MIXED, "short", "x" * 5000], ids=["zh", "mixed", "whole", "one-long-token-run"]
)
@pytest.mark.parametrize("framed", [False, True], ids=["plain", "instruction"])
def test_each_chunk_keeps_the_ids_of_its_model_input(
    tokenizer: TextTokenizer, text: str, framed: bool
) -> None:
    room = LIMIT - tokenizer.num_special_tokens
    with_ids = Chunker(tokenizer, room, keep_token_ids=True).split(text, frame if framed else None)
    assert with_ids == Chunker(tokenizer, room).split(text, frame if framed else None)  # the same cuts
    assert_ids_are_the_tokenizers(
        tokenizer, [frame(c.text) if framed else c.text for c in with_ids], with_ids
    )
    assert all(c.token_ids is None for c in Chunker(tokenizer, room).split(text))  # not kept unless asked


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(UNICODE_TEXT, min_size=1, max_size=5),
    max_tokens=st.integers(8, 48),
    overlap=st.integers(0, 3),
)
def test_property_split_many_keeps_every_chunks_ids(
    tokenizer: TextTokenizer, texts: list[str], max_tokens: int, overlap: int
) -> None:
    chunker = Chunker(tokenizer, max_tokens, overlap, keep_token_ids=True)
    plain = Chunker(tokenizer, max_tokens, overlap)
    items = [(text, frame if i % 2 else None) for i, text in enumerate(texts)]
    for (_, shape), got, expected in zip(
        items, chunker.split_many(items), plain.split_many(items), strict=True
    ):
        assert type(got) is type(expected)
        if isinstance(got, list):
            assert isinstance(expected, list) and got == expected
            assert_ids_are_the_tokenizers(tokenizer, [shape(c.text) if shape else c.text for c in got], got)


def test_a_tokenizer_without_ids_cannot_keep_them() -> None:
    with pytest.raises(ConfigError, match="gives none"):
        Chunker(WordSpans(), 16, keep_token_ids=True)


def _rec(offset: int, **event: object) -> FakeRecord:
    return FakeRecord(offset, str(event["id"]).encode(), json.dumps(event).encode())


def test_a_unit_sends_the_chunkers_ids_and_finds_poison_by_text(tokenizer: TextTokenizer) -> None:
    chunker = Chunker(tokenizer, LIMIT - 1, keep_token_ids=True)
    records = [
        _rec(0, id="a", text="first version of a"),
        _rec(1, id="b", text=ZH),
        _rec(2, id="a", text=MIXED, instruction=TASK),
    ]
    unit = build_unit(TP, 0, records, chunker, ModelSettings(), special_tokens=1)
    assert unit.texts and all(isinstance(item, TokenizedText) for item in unit.texts)
    texts = texts_of(unit.texts)
    assert tokenizer.encode(unit.texts) == tokenizer.encode(texts)  # the ids are the model input's
    assert unit.tokens == sum(map(len, tokenizer.encode(texts)))
    poisoned = texts[-1]  # a chunk of a's last event: a's first event is planned in its place
    assert unit.reject_texts({poisoned}, "crashes actors", ReasonCode.EMBEDDER_CRASH) == ["a"]
    assert [d.offset for d in unit.dead_letters] == [2]
    assert poisoned not in texts_of(unit.texts) and "first version of a" in texts_of(unit.texts)
    assert tokenizer.encode(unit.texts) == tokenizer.encode(texts_of(unit.texts))
    assert all(isinstance(item, TokenizedText) and item.ids.dtype == np.int32 for item in unit.texts)
