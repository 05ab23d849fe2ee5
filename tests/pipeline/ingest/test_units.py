from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
from aiokafka import TopicPartition
from helpers.fakes import FakeRecord, WordSpans

from pipeline.documents import DeleteDocument, UpsertDocument
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.units import build_unit, record_groups
from workers.model.tokenizer import load_text_tokenizer
from workers.settings import ModelSettings

TP = TopicPartition("documents", 2)


def _rec(offset: int, **event: object) -> FakeRecord:
    return FakeRecord(offset, str(event["id"]).encode(), json.dumps(event).encode())


def test_record_groups_keep_order_and_both_bounds_and_a_large_record_goes_alone() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(0, 50, size=int(rng.integers(0, 40)))
        records = [FakeRecord(i, None, b"x" * int(n)) for i, n in enumerate(lengths)]
        max_events, max_bytes = int(rng.integers(1, 10)), int(rng.integers(1, 120))
        groups = list(record_groups(records, max_events, max_bytes))
        assert [r.offset for g in groups for r in g] == list(range(len(records)))
        for group in groups:
            assert 1 <= len(group) <= max_events
            assert len(group) == 1 or sum(len(r.value) for r in group) <= max_bytes
        for before, after in itertools.pairwise(groups):  # a group closes only when a bound forces it
            full = len(before) == max_events
            assert full or sum(len(r.value) for r in before) + len(after[0].value) > max_bytes


def test_only_the_last_event_per_id_is_planned_in_partition_order() -> None:
    records = [
        _rec(10, id="a", text="one two three four five"),
        _rec(11, id="b", text="bee"),
        FakeRecord(12, b"junk", b"{not json"),
        _rec(13, op="delete", id="a"),
        _rec(14, id="c", text="sea " * 7, instruction="Represent this"),
        _rec(15, id="b", text="bee again"),
    ]
    unit = build_unit(TP, 3, records, Chunker(WordSpans(), max_tokens=6), ModelSettings(), special_tokens=2)
    assert unit.offsets == [10, 11, 12, 13, 14, 15] and unit.epoch == 3
    assert [(d.offset, d.key) for d in unit.dead_letters] == [(12, b"junk")]
    assert "JSON" in unit.dead_letters[0].reason and unit.dead_letters[0].code is ReasonCode.NOT_JSON
    # "a" upserted then deleted: only the delete survives; "b" keeps its second text.  "c"'s chunks
    # are cut with its instruction counted: at most 6 words framed.
    framed = "Instruct: Represent this\nQuery:"
    assert unit.texts == [*[f"{framed}sea sea"] * 3, f"{framed}sea", "bee again"]
    assert unit.tokens == 3 * (5 + 2) + (4 + 2) + (2 + 2)
    vectors = {8: np.arange(40, dtype=np.float32).reshape(5, 8)}
    writes = unit.writes(vectors)
    assert [type(w) for w in writes] == [DeleteDocument, UpsertDocument, UpsertDocument]
    assert [w.doc_id for w in writes] == ["a", "c", "b"]  # order of each id's surviving event
    c, b = writes[1], writes[2]
    assert isinstance(c, UpsertDocument) and isinstance(b, UpsertDocument)
    assert [row.text for row in c.chunks] == ["sea sea"] * 3 + ["sea"]  # stored without the instruction
    np.testing.assert_array_equal(c.vectors[8], vectors[8][:4])
    np.testing.assert_array_equal(b.vectors[8], vectors[8][4:])


def test_chunks_are_cut_with_the_instruction_counted_so_no_model_input_is_truncated(
    tiny_qwen3_path: Path,
) -> None:
    """Real byte-level BPE: the framed input of every chunk fits the model whole, and the chunks
    still cover the document.  Before the instruction was counted, inputs went over the limit and
    the tokenizer cut their tails."""
    settings = ModelSettings(name_or_path=str(tiny_qwen3_path), max_length=64)
    tokenizer = load_text_tokenizer(settings)
    room = tokenizer.max_length - tokenizer.num_special_tokens
    chunker = Chunker(tokenizer, max_tokens=room)
    text = "Kafka events become vectors; 东京的文档也一样。 " * 40
    instruction = "Represent this technical passage for retrieving the matching runbook"
    unit = build_unit(TP, 0, [_rec(0, id="doc", text=text, instruction=instruction)], chunker, settings,
                      special_tokens=tokenizer.num_special_tokens)  # fmt: skip
    assert not unit.dead_letters and len(unit.texts) > 1
    for framed, ids in zip(unit.texts, tokenizer.encode(unit.texts), strict=True):  # refuses, never cuts
        assert framed.startswith(f"Instruct: {instruction}\nQuery:")
        assert (
            len(ids) == tokenizer.count_tokens(framed) + tokenizer.num_special_tokens <= tokenizer.max_length
        )
    assert unit.tokens == sum(len(ids) for ids in tokenizer.encode(unit.texts))
    (write,) = unit.writes({8: np.zeros((len(unit.texts), 8), dtype=np.float32)})
    assert isinstance(write, UpsertDocument)
    assert "".join(row.text for row in write.chunks).replace(" ", "") == text.replace(" ", "")


def test_an_instruction_that_leaves_no_room_is_a_dead_letter() -> None:
    records = [_rec(0, id="x", text="short text", instruction="one two three four five six")]
    unit = build_unit(TP, 0, records, Chunker(WordSpans(), max_tokens=6), ModelSettings())
    assert not unit.texts and [d.code for d in unit.dead_letters] == [ReasonCode.UNCHUNKABLE]
    assert "instruction takes" in unit.dead_letters[0].reason


def test_a_document_milvus_refuses_becomes_a_dead_letter_with_its_original_bytes() -> None:
    records = [_rec(0, id="x", text="fine"), _rec(1, id="y", text="also fine")]
    unit = build_unit(TP, 1, records, Chunker(WordSpans(), max_tokens=8), ModelSettings())
    unit.reject("y", "rejected by Milvus: too big", ReasonCode.MILVUS_REJECTED)
    assert [w.doc_id for w in unit.writes({4: np.ones((2, 4), dtype=np.float32)})] == ["x"]
    (dead,) = unit.dead_letters
    assert (dead.offset, dead.key, dead.value, dead.reason, dead.code) == (
        1,
        b"y",
        records[1].value,
        "rejected by Milvus: too big",
        ReasonCode.MILVUS_REJECTED,
    )
    headers = dict(dead.headers())
    assert headers == {
        "error": b"rejected by Milvus: too big",
        "reason_code": b"milvus_rejected",
        "source_topic": b"documents",
        "source_partition": b"2",
        "source_offset": b"1",
    }


class EmojiAsFourTokens:
    """Whitespace words, except that an emoji is four tokens sharing its one character."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for m in re.finditer(r"\S+", text):
            if m.group() == "😀":
                spans.extend([m.span()] * 4)
            else:
                spans.append(m.span())
        return spans


def test_a_text_the_chunker_cannot_split_becomes_a_dead_letter() -> None:
    records = [_rec(0, id="ok", text="fine words"), _rec(1, id="emoji", text="smile 😀")]
    unit = build_unit(TP, 1, records, Chunker(EmojiAsFourTokens(), max_tokens=3), ModelSettings())
    assert unit.texts == ["fine words"]
    (dead,) = unit.dead_letters
    assert dead.offset == 1 and dead.reason.startswith("text cannot be chunked: ")
    assert "inseparable tokens" in dead.reason and dead.code is ReasonCode.UNCHUNKABLE


class SilentAndEmoji(EmojiAsFourTokens):
    """As EmojiAsFourTokens, except that the word "∅" has no tokens at all."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b in super().token_spans(text) if text[a:b] != "∅"]


def test_each_rejection_while_building_a_unit_has_its_own_code() -> None:
    records = [
        _rec(0, id="blank", text=" \t\u200b "),
        _rec(1, id="empty", text="∅ ∅"),
        _rec(2, id="emoji", text="smile 😀"),
        _rec(3, id="ok", text="fine words"),
    ]
    unit = build_unit(TP, 1, records, Chunker(SilentAndEmoji(), max_tokens=3), ModelSettings())
    assert unit.texts == ["fine words"]
    codes = {d.key: d.code for d in unit.dead_letters}
    assert codes == {
        b"blank": ReasonCode.BLANK_TEXT,
        b"empty": ReasonCode.NO_TOKENS,
        b"emoji": ReasonCode.UNCHUNKABLE,
    }
    assert {dict(d.headers())["reason_code"] for d in unit.dead_letters} == {
        b"blank_text",
        b"no_tokens",
        b"unchunkable",
    }


def test_documents_with_a_poison_text_become_dead_letters_and_the_texts_close_up() -> None:
    records = [
        _rec(0, id="x", text="one two three four five six"),
        _rec(1, id="y", text="poison here"),
        _rec(2, op="delete", id="z"),
        _rec(3, id="w", text="last words"),
    ]
    unit = build_unit(TP, 1, records, Chunker(WordSpans(), max_tokens=4), ModelSettings())
    tokens = unit.tokens
    assert unit.texts == ["one two three four", "five six", "poison here", "last words"]
    assert unit.reject_texts({"poison here"}, "crashed the embedder", ReasonCode.EMBEDDER_CRASH) == ["y"]
    assert unit.texts == ["one two three four", "five six", "last words"]
    assert unit.tokens == tokens  # what the in-flight accounting releases, unchanged
    assert [(d.offset, d.reason, d.code) for d in unit.dead_letters] == [
        (1, "crashed the embedder", ReasonCode.EMBEDDER_CRASH)
    ]
    writes = unit.writes({4: np.arange(12, dtype=np.float32).reshape(3, 4)})
    assert [w.doc_id for w in writes] == ["x", "z", "w"]
    w = writes[2]
    assert isinstance(w, UpsertDocument) and w.vectors[4].tolist() == [[8, 9, 10, 11]]


def test_with_tenants_an_upsert_without_a_usable_tenant_is_a_dead_letter_and_never_defaulted() -> None:
    records = [
        _rec(0, id="a", text="kept", metadata={"org": "acme"}),
        _rec(1, id="b", text="none"),
        _rec(2, id="c", text="number", metadata={"org": 7}),
        _rec(3, id="d", text="empty", metadata={"org": ""}),
        _rec(4, id="e", text="nested", metadata={"x": {"org": "acme"}}),
        _rec(5, id="f", text="long", metadata={"org": "é" * 513}),  # 1026 UTF-8 bytes
        _rec(6, id="a", text="later without", metadata={"lang": "de"}),  # "a"'s earlier event stands
        _rec(7, op="delete", id="g"),  # a delete carries no metadata and needs no tenant
    ]
    unit = build_unit(TP, 0, records, Chunker(WordSpans(), max_tokens=8), ModelSettings(), tenant_field="org")
    assert [(d.offset, d.code) for d in unit.dead_letters] == [
        (offset, ReasonCode.MISSING_TENANT) for offset in (1, 2, 3, 4, 5, 6)
    ]
    reasons = [d.reason for d in unit.dead_letters]
    assert "no 'org'" in reasons[0] and "is a int" in reasons[1] and "is empty" in reasons[2]
    assert "1026 UTF-8 bytes" in reasons[4]
    writes = unit.writes({8: np.ones((len(unit.texts), 8), dtype=np.float32)})
    assert [(type(w).__name__, w.doc_id) for w in writes] == [
        ("UpsertDocument", "a"),
        ("DeleteDocument", "g"),
    ]
    # Without tenants the same events are all planned.
    plain = build_unit(TP, 0, records, Chunker(WordSpans(), max_tokens=8), ModelSettings())
    assert not plain.dead_letters
