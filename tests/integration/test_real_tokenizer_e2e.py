"""Real text through Qwen3's real tokenizer end to end: Tansu broker → worker → Ray actor (tiny random
Qwen3 layers over the real 151,669-token vocabulary) → Milvus Lite.

Chinese, Japanese and mixed-script documents, some with an instruction: every chunk lands in every
replica, the chunks cover their document, every model input (instruction and EOS counted) fits the
chunk limit, and the stored vectors are what sentence-transformers computes on the same folder for
the same framed texts.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers.kafka_io import Record, assert_all_committed, produce
from helpers.settings import private_settings

from pipeline.runtime.assemble import build_runtime
from workers.bench.qwen3_folder import save_real_tokenizer_model
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.model.tokenizer import TextTokenizer
from workers.prompts import format_input

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_TOKENS = 48
TASK = "Represent this passage for retrieval"
BODIES = {
    "zh": "向量检索把文本变成高维向量。相似的文本在向量空间里彼此靠近！你遇到过这样的问题吗？",
    "ja": "埋め込みモデルは文章をベクトルに変換します。意味が近い文章は近いベクトルになります！",
    "mixed": "# 混合 / Mixed\n\nМосква — столица России! 東京は首都です。Größe, café 😀👩‍👩‍👧.\n\n",
    "web": "开源向量模型新星:Qwen3-Embedding-4B全面解析 &nbsp; 作者头像 张小明 1.2k 24 &amp; 文章封面图\n",
}


def _documents() -> dict[str, tuple[str, str | None]]:
    documents: dict[str, tuple[str, str | None]] = {}
    for i in range(12):
        for name, body in BODIES.items():
            text = "\n\n".join([f"## {name} {i}", body * (1 + i % 4)])
            documents[f"{name}-{i}"] = (text, TASK if i % 3 == 0 else None)
    return documents


async def test_real_text_lands_in_milvus_through_the_real_tokenizer(
    kafka_bootstrap: str, milvus_lite_uri: str, ray_session: None, tmp_path: Path
) -> None:
    folder = save_real_tokenizer_model("tiny-real", tmp_path / "tiny-real")
    settings = private_settings(
        kafka_bootstrap, milvus_lite_uri, folder, name="realtok", dims=(64, 32), max_tokens=MAX_TOKENS
    )
    documents = _documents()
    records = [
        Record(key.encode(), json.dumps({"id": key, "text": text, "instruction": task}).encode())
        for key, (text, task) in documents.items()
    ]
    runtime = await build_runtime(settings)
    try:
        await produce(settings.kafka, records)
        stats = await runtime.new_consumer().run(until_idle_s=2.0)
        assert stats.events == len(records)
        await assert_all_committed(settings.kafka)
        rows = await asyncio.to_thread(runtime.sink.fetch_all, 64)
        assert len(rows) == len(await asyncio.to_thread(runtime.sink.fetch_all, 32))
    finally:
        runtime.close()

    chunks: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        chunks[str(row["doc_id"])].append(row)
    assert set(chunks) == set(documents)
    tokenizer = TextTokenizer(embedding_tokenizer(), max_length=MAX_TOKENS + 1, pad_token_id=EOS_ID)
    framed: list[str] = []
    for doc_id, (text, task) in documents.items():
        ordered = sorted(chunks[doc_id], key=lambda row: int(str(row["chunk_index"])))
        texts = [str(row["text"]) for row in ordered]
        assert "".join("".join(texts).split()) == "".join(text.split()), doc_id
        inputs = [format_input(settings.model, piece, task) for piece in texts]
        # encode() refuses an input over MAX_TOKENS + the EOS: every model input fit whole.
        assert all(row[-1] == EOS_ID for row in tokenizer.encode(inputs))
        framed += inputs
    assert len(rows) > len(documents)  # the longer documents were split

    from sentence_transformers import SentenceTransformer

    peer = SentenceTransformer(str(folder), device="cpu")
    ordered_rows = [
        row
        for doc_id in documents
        for row in sorted(chunks[doc_id], key=lambda row: int(str(row["chunk_index"])))
    ]
    expected = peer.encode(framed, normalize_embeddings=True)
    stored = np.array([row["embedding"] for row in ordered_rows], dtype=np.float32)
    assert np.min(np.sum(expected * stored, axis=1)) >= 0.999
