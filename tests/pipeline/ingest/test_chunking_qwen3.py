"""The chunker on Qwen3's real tokenizer (byte-level BPE, 151,669 ids) and real scripts.

Chinese, Japanese and mixed-script markdown: with the instruction framed in and the appended EOS,
no model input is over the limit; no character is lost or duplicated; headings and 。！？ are
where chunks end; a chunk boundary never falls inside a character's byte tokens.  A property
test over random Unicode, and a 32,000-token document at the default limit and at the full context.
The tokenizer files come from ``make tokenizer`` (pinned by sha256); nothing is downloaded here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from helpers.text_strategies import UNICODE_TEXT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.chunking import Chunk, Chunker
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.errors import InputTooLong
from workers.model.tokenizer import TextTokenizer
from workers.prompts import format_input
from workers.settings import ModelSettings

LIMIT = 64
"""A model input's limit in these tests, the EOS included (the real one is 32,768)."""

ZH = (
    "# 向量检索简介\n\n"
    "向量检索把文本变成高维向量。相似的文本在向量空间里彼此靠近！这样就能按语义而不是关键词来搜索。"
    "你有没有遇到过这样的问题？想用大模型做语义搜索，却发现主流嵌入模型要么太慢、要么不支持中文长文本。\n\n"
    "## 流式摄取\n\n"
    "文档从 Kafka 读出，切成块，送到 GPU 上的嵌入模型。每一块的向量写入 Milvus 的多个集合。"
    "提交位点之前，所有副本都必须确认写入成功。重复投递不会产生重复的行。\n\n"
    "## 切块\n\n"
    "切块器优先在标题处断开，其次是空行、换行和句号。一个块永远不会超过模型的上限！"
    "指令和结束符也算在里面。这就是为什么模型从不需要截断输入？答案是：切块时已经数过了。\n"
)
JA = (
    "# 埋め込みモデル\n\n"
    "埋め込みモデルは文章をベクトルに変換します。意味が近い文章は近いベクトルになります！"
    "検索エンジンはこの性質を使って、キーワードではなく意味で文書を探します。本当にうまくいくのでしょうか？\n\n"
    "## 分割\n\n"
    "長い文書はチャンクに分割されます。見出し、空行、改行、句点の順に区切りを選びます。"
    "トークンの途中で切ることは最後の手段です。絵文字🚀や記号①も正しく扱われます。\n"
)
MIXED = (
    "# Mixed scripts / 混合文字 / Смешанный текст\n\n"
    "Qwen3-Embedding pools the last token, the appended <EOS>. Москва — столица России! "
    "東京は日本の首都です。Größe, naïve, café — and emoji 😀👩‍👩‍👧 (a ZWJ sequence).\n\n"
    "## Code\n\n```python\ndef embed(texts):\n    return model.encode(texts)  # 向量\n```\n\n"
    "## العربية\n\nالنص العربي يكتب من اليمين إلى اليسار. हिन्दी भी यहाँ है। 한국어 문장도 있습니다.\n"
)
TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(embedding_tokenizer(), max_length=LIMIT, pad_token_id=EOS_ID)


def frame(text: str) -> str:
    return format_input(ModelSettings(), text, TASK)


def assert_covers(text: str, chunks: list[Chunk]) -> None:
    """Chunks are slices of ``text`` in order with only whitespace between and around them."""
    position = 0
    for chunk in chunks:
        start = text.index(chunk.text, position)
        assert text[position:start].strip() == "", (text[position:start], chunk.text)
        position = start + len(chunk.text)
    assert text[position:].strip() == ""


def assert_cuts_at_token_edges(tokenizer: TextTokenizer, text: str, chunks: list[Chunk]) -> None:
    """No chunk edge splits a token of the whole text, whitespace at the edge aside: a byte-level
    token of part of a character, or tokens sharing a character, always land in one chunk."""
    spans = tokenizer.token_spans(text)
    position = 0
    for chunk in chunks:
        start = text.index(chunk.text, position)
        position = start + len(chunk.text)
        for edge in (start, position):
            for left, right in spans:
                if left < edge < right:
                    assert not (text[left:edge].strip() and text[edge:right].strip()), (
                        edge,
                        text[left:right],
                    )


@pytest.mark.parametrize("text", [ZH, JA, MIXED], ids=["zh", "ja", "mixed"])
@pytest.mark.parametrize("framed", [False, True], ids=["plain", "instruction"])
def test_real_tokenizer_chunks_fit_cover_the_text_and_cut_at_token_edges(
    tokenizer: TextTokenizer, text: str, framed: bool
) -> None:
    chunker = Chunker(tokenizer, max_tokens=LIMIT - tokenizer.num_special_tokens)
    shape: Callable[[str], str] = frame if framed else (lambda chunk: chunk)
    chunks = chunker.split(text, frame if framed else None)
    assert len(chunks) > 1
    # Every model input, instruction and EOS counted, fits: encode() refuses anything over LIMIT.
    inputs = tokenizer.encode([shape(chunk.text) for chunk in chunks])
    assert all(row[-1] == EOS_ID and len(row) <= LIMIT for row in inputs)
    assert [len(row) - 1 for row in inputs] == [chunk.token_count for chunk in chunks]
    assert_covers(text, chunks)
    assert_cuts_at_token_edges(tokenizer, text, chunks)
    for chunk in chunks:
        assert "\ufffd" not in tokenizer.decode(tokenizer.encode([chunk.text])[0])


def test_headings_and_cjk_sentence_ends_are_where_chunks_end(tokenizer: TextTokenizer) -> None:
    sentences = ["向量检索把文本变成高维向量。", "相似的文本彼此靠近！", "你遇到过这样的问题吗？"] * 12
    chunks = Chunker(tokenizer, max_tokens=40).split("".join(sentences))
    assert len(chunks) > 3
    assert all(chunk.text[-1] in "。！？" for chunk in chunks)
    sections = "\n\n".join(f"## 第{i}节\n\n" + "".join(sentences[:4]) for i in range(6))
    chunks = Chunker(tokenizer, max_tokens=63).split(sections)
    assert len(chunks) == 6 and all(chunk.text.startswith("## 第") for chunk in chunks)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE_TEXT, max_tokens=st.integers(8, 48))
def test_property_random_unicode_chunks_fit_and_cover(
    tokenizer: TextTokenizer, text: str, max_tokens: int
) -> None:
    chunks = Chunker(tokenizer, max_tokens=max_tokens).split(text)
    for chunk in chunks:
        assert 1 <= chunk.token_count == tokenizer.count_tokens(chunk.text) <= max_tokens
    assert_covers(text, chunks)
    assert_cuts_at_token_edges(tokenizer, text, chunks)


def test_a_32000_token_document_is_split_at_512_and_one_model_input_at_the_full_context() -> None:
    full = TextTokenizer(embedding_tokenizer(), max_length=32768, pad_token_id=EOS_ID)
    text = ""
    # With its markdown headings: they choose where a text that must be cut is cut, and this one fits.
    block = "\n\n".join([ZH, JA, MIXED])
    assert re.search(r"^#+ ", block, flags=re.MULTILINE)
    while full.count_tokens(text) < 32000:
        text += f"\n\nPart {len(text)}\n\n" + block
    spans = full.token_spans(text)
    text = text[: spans[31999][1]].strip()
    tokens = full.count_tokens(text)
    assert 31990 <= tokens <= 32000
    parts = Chunker(full, max_tokens=512).split(text)
    assert len(parts) >= tokens // 512 and all(part.token_count <= 512 for part in parts)
    assert_covers(text, parts)
    room = 32768 - full.num_special_tokens
    # One chunk for the model, when the row limit allows it (max_chars: Milvus' 65,535-byte text field).
    whole = Chunker(full, max_tokens=room, max_chars=len(text)).split(text)
    assert [chunk.text for chunk in whole] == [text]
    # With the default max_chars, the row limit splits it: no row over 16,000 characters.
    rows = Chunker(full, max_tokens=room).split(text)
    assert len(text) > 16_000 and len(rows) > 1 and all(len(row.text) <= 16_000 for row in rows)
    assert_covers(text, rows)
    assert len(full.encode([text])[0]) == tokens + 1 <= 32768
    with pytest.raises(InputTooLong):
        TextTokenizer(embedding_tokenizer(), max_length=tokens, pad_token_id=EOS_ID).encode([text])
