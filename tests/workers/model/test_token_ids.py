"""Token ids sent with a text (:class:`~workers.model.inputs.TokenizedText`) encode exactly as the text.

The chunker's ids come from :meth:`TextTokenizer.token_ids_batch` (special tokens excluded); the
model input built from them must be the one :meth:`TextTokenizer.encode` builds from the text: the
same special tokens around the same ids, for a BERT tokenizer ([CLS] ... [SEP]), the tiny Qwen3 one
and Qwen3-Embedding's real one (EOS appended).  Ids that are not the tokenizer's are refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.errors import InputTooLong, InvalidTokenIds
from workers.model.inputs import TokenizedText, text_of, texts_of
from workers.model.tokenizer import TextTokenizer, load_text_tokenizer
from workers.settings import ModelSettings

TEXTS = [
    "Hello world.",
    "Unicode: café, naïve, Größe, 東京, Москва, emoji 😀🚀 and a\ttab\nnewline.",
    "# 向量检索\n\n向量检索把文本变成高维向量。相似的文本在向量空间里彼此靠近！",
    "   leading and trailing spaces   ",
    "x",
]


@pytest.fixture(scope="module", params=["minilm", "tiny-qwen3", "qwen3-embedding"])
def tokenizer(request: pytest.FixtureRequest) -> TextTokenizer:
    if request.param == "minilm":
        return load_text_tokenizer(ModelSettings())
    if request.param == "tiny-qwen3":
        path: Path = request.getfixturevalue("tiny_qwen3_path")
        return load_text_tokenizer(ModelSettings(name_or_path=str(path)))
    return TextTokenizer(embedding_tokenizer(), max_length=512, pad_token_id=EOS_ID)


def tokenized(tokenizer: TextTokenizer, texts: list[str]) -> list[TokenizedText]:
    return [
        TokenizedText(text, ids) for text, ids in zip(texts, tokenizer.token_ids_batch(texts), strict=True)
    ]


def test_tokenized_texts_encode_as_their_texts(tokenizer: TextTokenizer) -> None:
    expected = tokenizer.encode(TEXTS)
    assert tokenizer.encode(tokenized(tokenizer, TEXTS)) == expected
    mixed = [
        item if i % 2 else text
        for i, (text, item) in enumerate(zip(TEXTS, tokenized(tokenizer, TEXTS), strict=True))
    ]
    assert tokenizer.encode(mixed) == expected  # texts and ids side by side keep their order
    assert tokenizer.num_special_tokens == len(expected[0]) - tokenizer.count_tokens(TEXTS[0])


def test_the_qwen3_embedding_input_from_ids_ends_with_the_eos() -> None:
    qwen = TextTokenizer(embedding_tokenizer(), max_length=512, pad_token_id=EOS_ID)
    rows = qwen.encode(tokenized(qwen, TEXTS))
    assert all(row[-1] == EOS_ID and row.count(EOS_ID) == 1 for row in rows)


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_TEXT, min_size=1, max_size=6))
def test_spans_ids_and_counts_come_from_one_tokenization(tokenizer: TextTokenizer, texts: list[str]) -> None:
    spans, ids = tokenizer.token_spans_and_ids_batch(texts)
    assert spans == tokenizer.token_spans_batch(texts)
    assert [row.tolist() for row in ids] == [row.tolist() for row in tokenizer.token_ids_batch(texts)]
    assert [len(row) for row in ids] == tokenizer.count_tokens_batch(texts)
    assert all(row.dtype == np.int32 for row in ids)
    encodable = [TokenizedText(text, row) for text, row in zip(texts, ids, strict=True) if len(row)]
    if encodable:
        assert tokenizer.encode(encodable) == tokenizer.encode(texts_of(encodable))


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (np.array([5, -1], dtype=np.int64), "outside"),
        (np.array([5, 10**6], dtype=np.int64), "outside"),
        (np.zeros((2, 2), dtype=np.int32), "vector of integers"),
        (np.array([1.0, 2.0]), "vector of integers"),
        (np.zeros(0, dtype=np.int32), "no token ids"),
    ],
    ids=["negative", "past-the-vocabulary", "matrix", "floats", "empty"],
)
def test_ids_that_are_not_the_tokenizers_are_refused(
    tokenizer: TextTokenizer, ids: np.ndarray, says: str
) -> None:
    with pytest.raises(InvalidTokenIds, match=says) as refused:
        tokenizer.encode(["fine", TokenizedText("bad", ids)])
    assert refused.value.index == 1
    again = pickle.loads(pickle.dumps(refused.value))  # it crosses Ray as itself
    assert (type(again), again.index, str(again)) == (InvalidTokenIds, 1, str(refused.value))


def test_ids_at_the_edges_of_the_vocabulary_are_taken(tokenizer: TextTokenizer) -> None:
    edges = [0, tokenizer.vocabulary_size - 1]
    (row,) = tokenizer.encode([TokenizedText("edges", np.array(edges, dtype=np.int32))])
    prefix, suffix = tokenizer.special_affixes()
    assert row == [*prefix, *edges, *suffix]


def test_ids_over_the_limit_are_refused_not_truncated(tokenizer: TextTokenizer) -> None:
    room = tokenizer.max_length - tokenizer.num_special_tokens
    ids = np.full(room, 100, dtype=np.int32)
    assert len(tokenizer.encode([TokenizedText("fits", ids)])[0]) == tokenizer.max_length
    with pytest.raises(InputTooLong) as refused:
        tokenizer.encode(["short", TokenizedText("long", np.append(ids, 100))])
    assert (refused.value.index, refused.value.tokens) == (1, tokenizer.max_length + 1)


def test_text_of_reads_both_kinds() -> None:
    item = TokenizedText("a text", np.array([1, 2], dtype=np.int32))
    assert text_of("plain") == "plain" and text_of(item) == "a text"
    assert texts_of(["plain", item]) == ["plain", "a text"]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_a_tokenized_text_crosses_a_pickle_as_itself(dtype: type[np.integer]) -> None:
    ids = np.array([0, 7, 151_668, 2**31 - 1], dtype=dtype)
    again = pickle.loads(pickle.dumps(TokenizedText("向量 text", ids), protocol=5))
    assert again.text == "向量 text"
    assert again.ids.dtype == dtype and again.ids.tolist() == ids.tolist()


def test_a_pickled_tokenized_text_carries_no_out_of_band_buffer() -> None:
    # Ray handles every out-of-band buffer of a request on its own: one per row costs more to send
    # than the row's text.
    buffers: list[pickle.PickleBuffer] = []
    item = TokenizedText("x", np.arange(300, dtype=np.int32))
    pickle.dumps([item] * 3, protocol=5, buffer_callback=buffers.append)
    assert buffers == []
