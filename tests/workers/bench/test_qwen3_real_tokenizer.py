"""Qwen3's real tokenizer and the ``tiny-real`` folder (tiny random layers, real vocabulary) on CPU.

The tokenizer is the pinned one (``make tokenizer``); the folder loads through the ordinary paths:
``EmbeddingModel.load`` and ``SentenceTransformer(folder)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers.bench.qwen3_folder import save_real_tokenizer_model
from workers.bench.qwen3_tokenizer import EOS_ID, TOKENIZER_SHA256, VOCAB, cached_dir, embedding_tokenizer
from workers.model.embedding_model import EmbeddingModel
from workers.prompts import format_query
from workers.settings import ModelSettings

TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = ["什么是向量检索？", "ベクトル検索とは", "What is Matryoshka representation learning?", "x"]
TEXTS = [
    "向量检索把文本变成高维向量。相似的文本在向量空间里彼此靠近！",
    "埋め込みモデルは文章をベクトルに変換します。",
    "Москва — столица России. Größe, naïve, café 😀👩‍👩‍👧",
    "a",
    " ".join(["Streaming ingestion reads document events from Kafka."] * 20),
]


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_real_tokenizer_model("tiny-real", tmp_path_factory.mktemp("tiny-real"))


def test_the_tokenizer_is_qwen3s_pinned_vocabulary() -> None:
    data = (cached_dir() / "tokenizer.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == TOKENIZER_SHA256
    tokenizer = embedding_tokenizer()
    assert tokenizer.get_vocab_size(with_added_tokens=True) == VOCAB
    assert [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643,
        151644,
        151645,
    ]
    # The EOS post-processor: every input, single or pair, ends with <|endoftext|>.
    assert tokenizer.encode("你好").ids[-1] == EOS_ID
    assert tokenizer.encode("a", "b").ids.count(EOS_ID) == 2


def test_a_query_is_the_instruction_template_then_eos_token_for_token(tiny_real: Path) -> None:
    from transformers import AutoTokenizer

    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_real)), device="cpu")
    raw = embedding_tokenizer()
    hf = AutoTokenizer.from_pretrained(str(tiny_real))
    for query in QUERIES:
        text = format_query(ModelSettings(), model.info().model_type, query, TASK)
        assert text == f"Instruct: {TASK}\nQuery:{query}"
        expected = [*raw.encode(text, add_special_tokens=False).ids, EOS_ID]
        assert model.encode_ids([text]) == [expected]
        assert hf(text)["input_ids"] == expected
        # "Instruct:" / "\n" / "Query:" are the vocabulary's own tokens, not bytes.
        assert expected[:3] == raw.encode("Instruct:", add_special_tokens=False).ids


def _pooled_positions(model: EmbeddingModel, batch: list[list[int]]) -> list[int]:
    """The input ids at the positions that last-token pooling reads, captured from the forward call."""
    seen: dict[str, Any] = {}

    def capture(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    handle = model.module.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model.embed_ids(batch, (model.native_dim,))
    finally:
        handle.remove()
    ids = seen["input_ids"]
    if "cu_seq_lens_q" in seen:  # packed: one row, texts end at cu_seqlens
        ends = seen["cu_seq_lens_q"].long()[1:] - 1
        return [int(v) for v in ids[0, ends]]
    mask = seen["attention_mask"]
    positions = torch.arange(mask.shape[1])
    last = torch.where(mask.bool(), positions, -1).amax(dim=1)
    return [int(ids[row, col]) for row, col in enumerate(last)]


@pytest.mark.parametrize("packing", ["off", "on"], ids=["padded", "packed"])
def test_the_pooled_token_is_eos_for_every_text_of_a_batch(tiny_real: Path, packing: str) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_real), packing=packing), device="cpu")
    assert model.packed == (packing == "on")
    texts = TEXTS + [format_query(ModelSettings(), "qwen3", q, TASK) for q in QUERIES]
    batch = model.encode_ids(texts)
    assert len({len(row) for row in batch}) > 1  # the padded batch has padding
    assert _pooled_positions(model, batch) == [EOS_ID] * len(texts)


def test_ours_matches_sentence_transformers_on_the_same_folder(tiny_real: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_real)), device="cpu")
    peer = SentenceTransformer(str(tiny_real), device="cpu")
    ours = model.embed(TEXTS, (model.native_dim,))[model.native_dim]
    theirs = peer.encode(TEXTS, normalize_embeddings=True)
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999


def test_special_token_text_inside_a_document_is_read_as_the_special_token() -> None:
    """A known limit (README, Not promised): like transformers' default (``split_special_tokens``
    false), the literal text ``<|endoftext|>`` in a document becomes the EOS id, not its characters."""
    from workers.model.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(embedding_tokenizer(), max_length=64, pad_token_id=EOS_ID)
    assert tokenizer.encode(["a<|endoftext|>b<|im_start|>"]) == [[64, EOS_ID, 65, 151644, EOS_ID]]
