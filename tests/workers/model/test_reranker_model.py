"""RerankerModel on tiny random models: Qwen3-Reranker's prompt token for token (Qwen3's real
tokenizer), scores equal to the reference computations (the full LM head; sentence-transformers'
CrossEncoder), a pair's score independent of its batch, packed or padded, and no silent truncation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.errors import ConfigError, InputTooLong
from workers.model.reranker_model import QWEN3_PREFIX, QWEN3_SUFFIX, RerankerModel, resolve_kind
from workers.reranker_settings import DEFAULT_INSTRUCTION, RerankerSettings

QUERY = "How do volcanoes form?"
DOCUMENTS = [
    "Volcanoes form where magma from the mantle rises through cracks in the crust.",
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "x",
    "Unicode: café, 東京, Москва 😀 — and <Document>: lookalikes " * 3,
]


@pytest.fixture(scope="module")
def qwen3(tiny_reranker_path: Path) -> RerankerModel:
    return RerankerModel.load(RerankerSettings(name_or_path=str(tiny_reranker_path), packing="off"), "cpu")


def official_ids(folder: Path, query: str, documents: list[str], instruction: str) -> list[list[int]]:
    """Qwen3-Reranker's model-card code: prefix + tokenizer(format_instruction(...)) + suffix."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in documents]
    body = tokenizer(pairs, padding=False, truncation=False, return_attention_mask=False)["input_ids"]
    return [prefix + ids + suffix for ids in body]


def test_the_qwen3_prompt_is_qwen3_rerankers_token_for_token(
    qwen3: RerankerModel, tiny_reranker_path: Path
) -> None:
    ours = qwen3.encode_pairs(QUERY, DOCUMENTS)
    assert [list(p) for p in ours] == official_ids(tiny_reranker_path, QUERY, DOCUMENTS, DEFAULT_INSTRUCTION)
    # Qwen3's own ids: <|im_start|> system \n ... and the assistant turn with an empty think block.
    assert ours[0][:3] == [151644, 8948, 198]
    assert ours[0][-9:] == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reranker_path))
    text = tokenizer.decode(ours[1], skip_special_tokens=False)
    assert text == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {DOCUMENTS[1]}"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    custom = qwen3.encode_pairs(QUERY, DOCUMENTS[:1], "Find the passage that explains geology")
    assert [list(p) for p in custom] == official_ids(
        tiny_reranker_path, QUERY, DOCUMENTS[:1], "Find the passage that explains geology"
    )


def test_qwen3_scores_are_p_yes_of_the_full_lm_head_at_the_last_position(
    qwen3: RerankerModel, tiny_reranker_path: Path
) -> None:
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_reranker_path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reranker_path))
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    expected = []
    with torch.inference_mode():
        for ids in official_ids(tiny_reranker_path, QUERY, DOCUMENTS, DEFAULT_INSTRUCTION):
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
            expected.append(torch.log_softmax(logits[[no, yes]], dim=0)[1].exp().item())
    scores = qwen3.score(QUERY, DOCUMENTS)
    assert scores.dtype == np.float32 and scores.shape == (len(DOCUMENTS),)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert np.ptp(scores) > 1e-3  # the pairs are told apart: the comparison above means something


def test_a_pairs_score_does_not_depend_on_its_batch_padded_or_packed(
    qwen3: RerankerModel, tiny_reranker_path: Path
) -> None:
    batched = qwen3.score(QUERY, DOCUMENTS)
    alone = np.concatenate([qwen3.score(QUERY, [d]) for d in DOCUMENTS])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    settings = RerankerSettings(name_or_path=str(tiny_reranker_path), packing="on")
    packed = RerankerModel.load(settings, "cpu")
    assert packed.packed
    np.testing.assert_allclose(packed.score(QUERY, DOCUMENTS), alone, rtol=0, atol=1e-5)


def test_a_pair_over_max_length_is_refused_naming_the_document_never_truncated(
    tiny_reranker_path: Path,
) -> None:
    model = RerankerModel.load(RerankerSettings(name_or_path=str(tiny_reranker_path), max_length=120), "cpu")
    fits = len(model.encode_pairs(QUERY, ["short"])[0])
    assert fits <= 120
    with pytest.raises(InputTooLong) as refused:
        model.encode_pairs(QUERY, ["short", "word " * 200])
    assert (refused.value.index, refused.value.limit) == (1, 120)
    assert refused.value.tokens > 120


def test_a_max_length_past_the_models_positions_is_refused_at_load(
    tiny_reranker_path: Path, tiny_cross_encoder_path: Path
) -> None:
    for path in (tiny_reranker_path, tiny_cross_encoder_path):
        positions = json.loads((path / "config.json").read_text())["max_position_embeddings"]
        with pytest.raises(ConfigError, match=rf"reranker\.max_length {positions + 1} exceeds .*{positions}"):
            RerankerModel.load(RerankerSettings(name_or_path=str(path), max_length=positions + 1), "cpu")
        at_limit = RerankerModel.load(RerankerSettings(name_or_path=str(path), max_length=positions), "cpu")
        assert at_limit.max_length == positions


def test_the_cross_encoder_scores_as_sentence_transformers_crossencoder(
    tiny_cross_encoder_path: Path,
) -> None:
    from sentence_transformers import CrossEncoder

    model = RerankerModel.load(RerankerSettings(name_or_path=str(tiny_cross_encoder_path)), "cpu")
    assert model.info().kind == "cross-encoder"
    reference = CrossEncoder(str(tiny_cross_encoder_path), device="cpu").predict(
        [(QUERY, d) for d in DOCUMENTS], batch_size=2
    )
    batched = model.score(QUERY, DOCUMENTS)
    np.testing.assert_allclose(batched, reference, rtol=0, atol=1e-5)
    alone = np.concatenate([model.score(QUERY, [d]) for d in DOCUMENTS])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    assert np.ptp(batched) > 1e-3


def test_the_kind_comes_from_the_architectures_unless_set() -> None:
    assert resolve_kind("auto", ["Qwen3ForCausalLM"]) == "qwen3"
    assert resolve_kind("auto", ["BertForSequenceClassification"]) == "cross-encoder"
    assert resolve_kind("cross-encoder", ["Qwen3ForCausalLM"]) == "cross-encoder"
    with pytest.raises(ConfigError, match=r"reranker\.kind"):
        resolve_kind("auto", ["BertModel"])


def test_truncate_documents_cuts_only_the_documents_end_as_the_model_cards_code_does(
    tiny_reranker_path: Path, tiny_cross_encoder_path: Path
) -> None:
    long_document = "magma rises through the crust " * 60
    settings = RerankerSettings(name_or_path=str(tiny_reranker_path), max_length=120, truncate_documents=True)
    model = RerankerModel.load(settings, "cpu")
    fits, cut = model.encode_pairs(QUERY, ["short", long_document])
    assert (
        len(cut) == 120
        and list(fits) == official_ids(tiny_reranker_path, QUERY, ["short"], DEFAULT_INSTRUCTION)[0]
    )
    # Qwen3-Reranker's own code: the body truncated to max_length minus the prompt's tokens.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reranker_path))
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    body = f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {long_document}"
    room = 120 - len(prefix) - len(suffix)
    assert list(cut) == prefix + tokenizer(body, truncation=True, max_length=room)["input_ids"] + suffix
    with pytest.raises(InputTooLong):  # the query is never cut
        model.encode_pairs("why " * 200, ["short"])
    cross = RerankerModel.load(
        RerankerSettings(name_or_path=str(tiny_cross_encoder_path), max_length=64, truncate_documents=True),
        "cpu",
    )
    [pair] = cross.encode_pairs(QUERY, [long_document])
    expected = AutoTokenizer.from_pretrained(str(tiny_cross_encoder_path))(
        QUERY, long_document, truncation="only_second", max_length=64
    )
    assert list(pair) == expected["input_ids"]
    assert pair.segment_start == expected["token_type_ids"].index(1)
