from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.models import write_sentence_transformers_layout
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.errors import ConfigError, InputTooLong
from workers.model.tokenizer import (
    MAX_DEFAULT_LENGTH,
    TextTokenizer,
    input_limit,
    load_text_tokenizer,
    normalize_spans,
    resolve_model_files,
)
from workers.settings import ModelSettings

REPO_ROOT = Path(__file__).resolve().parents[3]

TEXTS = [
    "Hello world.",
    "Streaming ingestion: Kafka → Ray → Milvus, one collection per dimension.",
    "Unicode: café, naïve, Größe, 東京, Москва, emoji 😀🚀 and a\ttab\nnewline.",
    "   leading and trailing spaces   ",
    "x",
]


@pytest.fixture(scope="module")
def minilm() -> TextTokenizer:
    return load_text_tokenizer(ModelSettings())


@pytest.fixture(scope="module")
def qwen(tiny_qwen3_path: Path) -> TextTokenizer:
    return load_text_tokenizer(ModelSettings(name_or_path=str(tiny_qwen3_path)))


@pytest.fixture(params=["minilm", "qwen"])
def tokenizer(request: pytest.FixtureRequest) -> TextTokenizer:
    return request.getfixturevalue(request.param)


def _assert_valid_spans(spans: list[tuple[int, int]], text: str) -> None:
    for (start, end), (next_start, next_end) in itertools.pairwise(spans):
        assert next_start >= start and next_end >= end
    for start, end in spans:
        assert 0 <= start < end <= len(text)


# --- model files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_minilm_resolves_to_the_packaged_folder(name: str, minilm_path: Path) -> None:
    files = resolve_model_files(name)
    assert Path(files.path) == minilm_path
    assert files.st_pooling_modes == ("mean",)  # legacy pooling_mode_mean_tokens flag
    assert files.st_max_seq_length == 256


def test_plain_transformers_folder_passes_through(tiny_qwen3_path: Path) -> None:
    files = resolve_model_files(str(tiny_qwen3_path))
    assert files.path == str(tiny_qwen3_path)
    assert files.st_pooling_modes is None and files.st_max_seq_length is None


def test_transformer_module_in_a_subfolder_is_found(tiny_qwen3_path: Path, tmp_path: Path) -> None:
    layout = write_sentence_transformers_layout(tiny_qwen3_path, tmp_path / "st", pooling_mode="lasttoken")
    files = resolve_model_files(str(layout))
    assert files.path == str(layout / "0_Transformer")
    assert files.st_pooling_modes == ("lasttoken",)
    assert files.st_max_seq_length == 128
    assert load_text_tokenizer(ModelSettings(name_or_path=str(layout))).max_length == 128


def test_sentence_transformers_module_that_changes_vectors_is_refused(
    tiny_qwen3_path: Path, tmp_path: Path
) -> None:
    layout = write_sentence_transformers_layout(tiny_qwen3_path, tmp_path / "st", pooling_mode="mean")
    modules = json.loads((layout / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (layout / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="Dense"):
        resolve_model_files(str(layout))


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        load_text_tokenizer(ModelSettings(name_or_path=str(tmp_path / "nowhere")))


# --- limits ----------------------------------------------------------------------------------


def test_default_limit_is_the_smallest_model_limit_capped() -> None:
    assert input_limit(None, 512, 512, 256) == 256
    assert input_limit(None, 10**30, 32768, None) == MAX_DEFAULT_LENGTH
    assert input_limit(100, 512, 512, 256) == 100


def test_requested_limit_beyond_the_positions_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="exceeds"):
        input_limit(1024, 512, 512, None)


def test_tokenizer_limits(minilm: TextTokenizer, qwen: TextTokenizer) -> None:
    assert (minilm.max_length, minilm.num_special_tokens) == (256, 2)  # [CLS] ... [SEP]
    assert (qwen.max_length, qwen.num_special_tokens) == (512, 1)  # ... <|endoftext|>


# --- spans and counts --------------------------------------------------------------------------


def test_spans_cover_every_character_of_a_byte_level_tokenizer(qwen: TextTokenizer) -> None:
    for text in TEXTS:
        spans = qwen.token_spans(text)
        _assert_valid_spans(spans, text)
        covered = {i for start, end in spans for i in range(start, end)}
        assert covered == set(range(len(text)))


def test_spans_cover_every_visible_character(minilm: TextTokenizer) -> None:
    for text in TEXTS:
        spans = minilm.token_spans(text)
        _assert_valid_spans(spans, text)
        covered = {i for start, end in spans for i in range(start, end)}
        assert {i for i, char in enumerate(text) if not char.isspace()} <= covered
        assert all(not text[i].isspace() for i in covered)


def test_spans_of_words(minilm: TextTokenizer) -> None:
    text = "Hello, brave new world"
    assert [text[start:end] for start, end in minilm.token_spans(text)] == [
        "Hello",
        ",",
        "brave",
        "new",
        "world",
    ]


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_spans_are_valid_for_any_text(minilm: TextTokenizer, qwen: TextTokenizer, text: str) -> None:
    for tokenizer in (minilm, qwen):
        spans = tokenizer.token_spans(text)
        _assert_valid_spans(spans, text)
        assert len(spans) == tokenizer.count_tokens(text)


def test_count_matches_model_input_without_special_tokens(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode(TEXTS)
    assert [len(row) - tokenizer.num_special_tokens for row in ids] == [
        tokenizer.count_tokens(text) for text in TEXTS
    ]


def test_long_text_is_counted_whole_without_warnings(
    tokenizer: TextTokenizer, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    text = " ".join(TEXTS) * 200
    with caplog.at_level(logging.WARNING):
        count = tokenizer.count_tokens(text)
        spans = tokenizer.token_spans(text)
    assert count > 10 * tokenizer.max_length
    assert len(spans) == count
    _assert_valid_spans(spans, text)
    assert not caplog.records and not recwarn.list


def test_encode_refuses_an_input_over_the_limit_instead_of_truncating(
    minilm: TextTokenizer, qwen: TextTokenizer
) -> None:
    for tokenizer in (minilm, qwen):
        room = tokenizer.max_length - tokenizer.num_special_tokens
        fits = " ".join(["x"] * room)
        while tokenizer.count_tokens(fits) > room:  # a tokenizer may count "x" and " x" differently
            fits = fits[: fits.rindex(" ")]
        fits += " x" * (room - tokenizer.count_tokens(fits))
        assert tokenizer.count_tokens(fits) == room
        ids = tokenizer.encode(["short", fits])
        assert len(ids[1]) == tokenizer.max_length  # exactly the limit: every token kept
        with pytest.raises(InputTooLong) as refused:
            tokenizer.encode(["short", fits + " x"])
        too_many = tokenizer.count_tokens(fits + " x") + tokenizer.num_special_tokens
        assert (refused.value.index, refused.value.tokens) == (
            1,
            too_many,
        ) and too_many > tokenizer.max_length
        assert refused.value.limit == tokenizer.max_length
    assert minilm.encode(["x"])[0][0] == 101 and minilm.encode(["x"])[0][-1] == 102  # [CLS], [SEP]
    assert qwen.encode(["x"])[0][-1] == qwen.pad_token_id  # <|endoftext|> is EOS and PAD


# --- normalize_spans --------------------------------------------------------------------------


def test_empty_span_joins_the_following_token() -> None:
    # A SentencePiece "▁" standing alone before its word has an empty span.
    assert normalize_spans([(0, 0), (0, 5), (5, 6)], 6) == [(0, 5), (0, 5), (5, 6)]


def test_trailing_empty_span_joins_the_preceding_token() -> None:
    assert normalize_spans([(0, 3), (3, 3)], 3) == [(0, 3), (0, 3)]


def test_spans_that_step_back_are_made_monotonic() -> None:
    assert normalize_spans([(0, 4), (2, 3), (4, 6)], 6) == [(0, 4), (2, 4), (4, 6)]


def test_tokens_covering_no_character_stand_for_the_whole_text() -> None:
    assert normalize_spans([(0, 0), (0, 0)], 2) == [(0, 2), (0, 2)]


# --- packaging ---------------------------------------------------------------------------------


def test_module_imports_without_torch() -> None:
    # pipeline/ imports this module at top level: transformers (and torch) load only with a tokenizer.
    code = (
        "import sys, workers.model.tokenizer; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)
