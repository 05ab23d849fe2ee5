"""The documents ``bench --end-to-end`` and ``bench --scaling`` embed, and how they reach the topic.

Two workloads: random words that the model's tokenizer reads as one token each, with lognormal lengths
(median 300, sigma 0.8, clipped to 8..``max_words``: the workload of ``bench``), or the documents of a
real-text JSONL corpus (``bench --real-text``'s, ``tests/perf/build_realtext_corpus.py``), round and
round the corpus up to the number of documents asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.ingest.produce import OutgoingRecord, send_records
from pipeline.settings import Settings
from pipeline.tools.bench_realtext import read_corpus
from workers.model.tokenizer import TextTokenizer, load_text_tokenizer


def one_token_words(tokenizer: TextTokenizer, count: int, seed: int) -> list[str]:
    """Up to ``count`` distinct alphanumeric words that ``tokenizer`` reads as exactly one token."""
    vocab = tokenizer.vocabulary_size
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    for token in rng.permutation(vocab)[: max(count * 8, 1024)]:
        word = tokenizer.decode([int(token)]).strip()
        if word.isalnum() and tokenizer.count_tokens(word) == 1:
            words[word] = None
            if len(words) == count:
                break
    if not words:
        raise ValueError("the tokenizer has no one-token alphanumeric words to build documents from")
    return list(words)


def make_documents(tokenizer: TextTokenizer, count: int, seed: int, *, max_words: int = 2048) -> list[str]:
    """``count`` texts of random one-token words, lognormal lengths (median 300, sigma 0.8, 8..max)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(300), 0.8, size=count)), 8, max_words).astype(int)
    words = np.array(one_token_words(tokenizer, 4096, seed))
    return [" ".join(rng.choice(words, size=int(n))) for n in lengths]


async def produce_documents(settings: Settings, texts: Sequence[str]) -> None:
    """Send one upsert event per text to the event topic (ids ``doc-{i}``), all acknowledged."""
    records = (
        OutgoingRecord(
            f"doc-{i}".encode(), json.dumps({"op": "upsert", "id": f"doc-{i}", "text": text}).encode()
        )
        for i, text in enumerate(texts)
    )
    await send_records(settings.kafka, records)


async def bench_texts(
    settings: Settings, docs: int, warmup_docs: int, *, seed: int, max_words: int, real_text: Path | None
) -> tuple[list[str], list[str]]:
    """The timed documents and the warm-up ones: from ``real_text`` (the corpus' last documents warm
    up) when given, else random one-token words (seeds ``seed`` and ``seed + 1``)."""
    if real_text is not None:
        corpus = [document["text"] for document in read_corpus(real_text)]
        if not corpus:
            raise ValueError(f"{real_text} holds no documents")
        return [corpus[i % len(corpus)] for i in range(docs)], corpus[-warmup_docs:]
    tokenizer = await asyncio.to_thread(load_text_tokenizer, settings.model)
    texts = await asyncio.to_thread(make_documents, tokenizer, docs, seed, max_words=max_words)
    warmup = await asyncio.to_thread(make_documents, tokenizer, warmup_docs, seed + 1, max_words=max_words)
    return texts, warmup
