"""UnitEmbedder on a fake pool: a text that crashes the actors, or that the model fails on alone,
is dead-lettered with its code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from aiokafka import TopicPartition

from pipeline.ingest.chunking import Chunker
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.unit_embedder import UnitEmbedder
from pipeline.ingest.units import build_unit
from workers.errors import PoisonTexts
from workers.settings import ModelSettings

TP = TopicPartition("documents", 0)


class WordSpans:
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000


class CrashingPool:
    """Embeds every text as ones, except that a request holding "POISON" fails as the pool reports it."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        self.requests.append(list(texts))
        poison = tuple(t for t in texts if "POISON" in t)
        if poison:
            raise PoisonTexts(poison, crashes=2)
        return {d: np.ones((len(texts), d), dtype=np.float32) for d in dims}


async def test_a_document_whose_text_crashes_the_actors_is_dead_lettered_as_embedder_crash() -> None:
    records = [
        Rec(i, doc.encode(), json.dumps({"id": doc, "text": text}).encode())
        for i, (doc, text) in enumerate([("a", "fine words"), ("b", "a POISON pill"), ("c", "more words")])
    ]
    unit = build_unit(TP, 1, records, Chunker(WordSpans(), max_tokens=8), ModelSettings())
    pool = CrashingPool()
    vectors = await UnitEmbedder(pool, (4,), max_request_tokens=1000, backoff_cap_s=0.01).embed(unit)
    assert vectors[4].shape == (2, 4) and unit.texts == ["fine words", "more words"]
    (dead,) = unit.dead_letters
    assert (dead.key, dead.code) == (b"b", ReasonCode.EMBEDDER_CRASH)
    assert dead.reason == "embedding it crashed the embedder actor 2 time(s), run alone"
    assert dict(dead.headers())["reason_code"] == b"embedder_crash"
    assert pool.requests[-1] == ["fine words", "more words"]  # the rest embedded again without it


class FailingPool:
    """Embeds every text as ones, except that the model fails, run alone, on texts holding "HUGE"."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        self.requests.append(list(texts))
        failed = {t: "out of memory in a forward pass over 1 inputs (9 tokens)" for t in texts if "HUGE" in t}
        if failed:
            raise PoisonTexts((), crashes=2, failed=failed)
        return {d: np.ones((len(texts), d), dtype=np.float32) for d in dims}


async def test_a_document_the_model_fails_on_alone_is_dead_lettered_as_embedder_error_with_the_reason() -> (
    None
):
    records = [
        Rec(i, doc.encode(), json.dumps({"id": doc, "text": text}).encode())
        for i, (doc, text) in enumerate([("a", "fine words"), ("b", "a HUGE text"), ("c", "more words")])
    ]
    unit = build_unit(TP, 1, records, Chunker(WordSpans(), max_tokens=8), ModelSettings())
    pool = FailingPool()
    vectors = await UnitEmbedder(pool, (4,), max_request_tokens=1000, backoff_cap_s=0.01).embed(unit)
    assert vectors[4].shape == (2, 4) and unit.texts == ["fine words", "more words"]
    (dead,) = unit.dead_letters
    assert (dead.key, dead.code) == (b"b", ReasonCode.EMBEDDER_ERROR)
    assert (
        dead.reason
        == "the model failed on it, run alone: out of memory in a forward pass over 1 inputs (9 tokens)"
    )
    assert dict(dead.headers())["reason_code"] == b"embedder_error"
    assert pool.requests[-1] == ["fine words", "more words"]
