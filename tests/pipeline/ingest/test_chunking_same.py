"""The batched chunker cuts exactly the chunks the one-document-at-a-time chunker cut.

:mod:`helpers.chunking_reference` is the chunker before batching, frozen.  For tokenizers with and
without batch calls, byte-level ones whose tokens share characters, ones whose chunks count more
than their spans said (the step-by-step path), frames, overlap, and poison: ``split`` and
``split_many`` give what the reference gives, or the same PoisonInput.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import pytest
from helpers.chunking_reference import Chunker as ReferenceChunker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_chunking import ByteTokens, LeadingWordCostsMore, WordTokenizer, minilm

from pipeline.ingest.chunk_tokens import BatchTokenSpans, TokenSpans
from pipeline.ingest.chunking import Chunk, Chunker
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.errors import PoisonInput
from workers.model.tokenizer import TextTokenizer, normalize_spans


@cache
def qwen3() -> TextTokenizer:
    return TextTokenizer(embedding_tokenizer(), max_length=32768, pad_token_id=EOS_ID)


TOKENIZERS: dict[str, Callable[[], TokenSpans]] = {
    "words": WordTokenizer,
    "bytes": ByteTokens,
    "leading-word-costs-more": LeadingWordCostsMore,
    "minilm-raw-offsets": minilm,
    "qwen3": qwen3,
}

_fragments = st.sampled_from(
    [
        *[" ", "  ", "\n", "\n\n", "\t", "# ", "\n## ", "```\n", "\n```\n", ". ", "! ", "。", ", ", ")"],
        *[
            "word",
            "longerwordthanmost",
            "x" * 40,
            "中文字符",
            "😀",
            "👨\u200d👩\u200d👧",
            "\u200b",
            "e\u0301",
        ],
    ]
)
_documents = st.lists(_fragments | st.text(max_size=12), max_size=80).map("".join)


def reference(tokenizer: TokenSpans, text: str, max_tokens: int, overlap: int, frame: object) -> object:
    try:
        chunks = ReferenceChunker(tokenizer, max_tokens, overlap).split(text, frame)  # type: ignore[arg-type]
    except PoisonInput as exc:
        return ("poison", str(exc))
    return [Chunk(c.text, c.index, c.token_count) for c in chunks]


def ours(chunker: Chunker, text: str, frame: Callable[[str], str] | None) -> object:
    try:
        return chunker.split(text, frame)
    except PoisonInput as exc:
        return ("poison", str(exc))


def outcome(result: list[Chunk] | PoisonInput) -> object:
    return ("poison", str(result)) if isinstance(result, PoisonInput) else result


def _frame(instruction: str | None) -> Callable[[str], str] | None:
    if instruction is None:
        return None
    return lambda chunk: f"Instruct: {instruction}\nQuery:{chunk}"


@pytest.mark.parametrize("name", list(TOKENIZERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(_documents, min_size=1, max_size=6),
    max_tokens=st.integers(2, 40),
    data=st.data(),
)
def test_same_chunks_as_the_reference(
    name: str, texts: list[str], max_tokens: int, data: st.DataObject
) -> None:
    tokenizer = TOKENIZERS[name]()
    overlap = data.draw(st.integers(0, (max_tokens - 1) // 2))
    instructions = data.draw(
        st.lists(
            st.none() | st.sampled_from(["", "find", "找到 相关 段落"]),
            min_size=len(texts),
            max_size=len(texts),
        )
    )
    frames = [_frame(instruction) for instruction in instructions]
    chunker = Chunker(tokenizer, max_tokens, overlap)
    expected = [
        reference(tokenizer, text, max_tokens, overlap, frame)
        for text, frame in zip(texts, frames, strict=True)
    ]
    assert [ours(chunker, text, frame) for text, frame in zip(texts, frames, strict=True)] == expected
    assert [outcome(r) for r in chunker.split_many(list(zip(texts, frames, strict=True)))] == expected


def test_batch_tokenizers_are_used_in_batches() -> None:
    class Counting(WordTokenizer):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def token_spans(self, text: str) -> list[tuple[int, int]]:
            raise AssertionError("batch calls only")

        def token_spans_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
            self.calls.append("spans")
            return [WordTokenizer.token_spans(self, text) for text in texts]

        def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
            self.calls.append("counts")
            return [len(WordTokenizer.token_spans(self, text)) for text in texts]

    tokenizer = Counting()
    assert isinstance(tokenizer, BatchTokenSpans)
    texts = [" ".join(f"w{i}x{j}" for j in range(50)) + "." for i in range(20)]
    results = Chunker(tokenizer, 8).split_many([(text, None) for text in texts])
    assert [outcome(r) for r in results] == [reference(WordTokenizer(), t, 8, 0, None) for t in texts]
    assert tokenizer.calls == ["spans", "counts"]  # 20 documents, 140 chunks: two calls


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=30),
)
def test_normalize_spans_fast_path_is_the_loop(offsets: list[tuple[int, int]]) -> None:
    """Spans already normalized come back unchanged, as the token-by-token loop leaves them."""
    spans = normalize_spans(offsets, 30)
    assert normalize_spans(spans, 30) == spans
    monotone = sorted((min(a, b), max(a, b) + 1) for a, b in offsets)
    ends = [end for _, end in monotone]
    if ends == sorted(ends):
        assert normalize_spans(monotone, 31) == monotone


CORPUS = Path(
    os.environ.get("REALTEXT_CORPUS", Path(__file__).parents[3] / ".cache" / "realtext-corpus.jsonl")
)


@pytest.mark.skipif(not CORPUS.is_file(), reason="no real-text corpus (tests/perf/build_realtext_corpus.py)")
@pytest.mark.parametrize(("max_tokens", "overlap"), [(512, 0), (128, 32)])
def test_same_chunks_as_the_reference_over_the_real_corpus(max_tokens: int, overlap: int) -> None:
    """Every document of the real-text corpus (8 languages of manual pages, crawled Chinese), Qwen3."""
    texts = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    expected = [reference(qwen3(), text, max_tokens, overlap, None) for text in texts]
    chunker = Chunker(qwen3(), max_tokens, overlap)
    assert [outcome(r) for r in chunker.split_many([(text, None) for text in texts])] == expected
