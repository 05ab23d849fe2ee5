from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import SAMPLE_TEXTS, build_tiny_qwen3, write_sentence_transformers_layout
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from workers.errors import ConfigError, InputTooLong
from workers.model.embedding_model import EmbeddingModel, ModelInfo
from workers.settings import ModelSettings

REPO_ROOT = Path(__file__).resolve().parents[3]

TEXTS = SAMPLE_TEXTS
LONG = " ".join(["Ray actors hold the model and batch by tokens."] * 60)  # over every limit here
LONGEST = " ".join(["Ray actors hold the model and batch by tokens."] * 5)  # fits 128 tokens


def _load_cpu(settings: ModelSettings) -> EmbeddingModel:
    """Pinned to the CPU (float32) so tolerances hold on GPU machines too."""
    return EmbeddingModel.load(settings, device="cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def minilm() -> EmbeddingModel:
    return _load_cpu(ModelSettings())


@pytest.fixture(scope="module")
def qwen(tiny_qwen3_path: Path) -> EmbeddingModel:
    return _load_cpu(ModelSettings(name_or_path=str(tiny_qwen3_path)))


@pytest.fixture(scope="module")
def qwen_reference(tiny_qwen3_path: Path) -> torch.nn.Module:
    """The same weights loaded by plain transformers, for manual forwards of single inputs."""
    return AutoModel.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()


def _manual_hidden(reference: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """Last hidden states of one unpadded input."""
    with torch.inference_mode():
        return reference(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()


# --- MiniLM against sentence-transformers ------------------------------------------------------


def test_minilm_matches_sentence_transformers(minilm: EmbeddingModel, minilm_path: Path) -> None:
    texts = list(TEXTS)
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    ours = minilm.embed(texts, [384])[384]
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert _cosines(ours, expected).min() >= 0.999


def test_minilm_properties(minilm: EmbeddingModel) -> None:
    assert minilm.info() == ModelInfo(
        name="sentence-transformers/all-MiniLM-L6-v2",
        native_dim=384,
        max_length=256,
        device="cpu",
        dtype="float32",
        pooling="mean",
        model_type="bert",
    )
    assert minilm.padding_side == "right"
    assert pickle.loads(pickle.dumps(minilm.info())) == minilm.info()


# --- tiny Qwen3: last-token pooling --------------------------------------------------------------


def test_qwen3_pools_the_last_token_with_left_padding(qwen: EmbeddingModel) -> None:
    assert (qwen.pooling, qwen.padding_side, qwen.native_dim) == ("last_token", "left", 64)


def test_last_token_is_the_last_real_token_of_each_row(
    qwen: EmbeddingModel, qwen_reference: torch.nn.Module
) -> None:
    ids = qwen.encode_ids(TEXTS)
    eos = qwen.tokenizer.pad_token_id
    assert all(row[-1] == eos for row in ids)  # the tokenizer appends <|endoftext|>, also the PAD id
    expected = np.stack([_normalize(_manual_hidden(qwen_reference, row)[-1]) for row in ids])
    np.testing.assert_allclose(qwen.embed_ids(ids, [64])[64], expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["last_token", "mean", "cls"])
def test_batched_equals_single(tiny_qwen3_path: Path, pooling: str) -> None:
    model = _load_cpu(ModelSettings(name_or_path=str(tiny_qwen3_path), pooling=pooling))
    batched = model.embed([*TEXTS, LONGEST], [64])[64][: len(TEXTS)]
    single = np.concatenate([model.embed([text], [64])[64] for text in TEXTS])
    assert _cosines(batched, single).min() >= 0.9999


def test_explicit_pooling_overrides_auto(tiny_qwen3_path: Path, qwen_reference: torch.nn.Module) -> None:
    for pooling, reduce in [("mean", lambda h: h.mean(axis=0)), ("cls", lambda h: h[0])]:
        model = _load_cpu(ModelSettings(name_or_path=str(tiny_qwen3_path), pooling=pooling))
        assert (model.pooling, model.padding_side) == (pooling, "right")
        ids = model.encode_ids(TEXTS)
        expected = np.stack([_normalize(reduce(_manual_hidden(qwen_reference, row))) for row in ids])
        np.testing.assert_allclose(model.embed_ids(ids, [64])[64], expected, atol=1e-5)


def test_an_input_over_the_limit_is_refused_where_sentence_transformers_truncates(
    tiny_qwen3_path: Path, minilm: EmbeddingModel
) -> None:
    model = _load_cpu(ModelSettings(name_or_path=str(tiny_qwen3_path), max_length=16))
    with pytest.raises(InputTooLong) as refused:
        model.encode_ids(["short", LONG])
    assert refused.value.index == 1 and refused.value.tokens > 16 == refused.value.limit
    ids = model.encode_ids(["short"])
    assert ids[0][-1] == model.tokenizer.pad_token_id  # the EOS last-token pooling reads
    with pytest.raises(InputTooLong):  # LONG exceeds MiniLM's 256 tokens too
        minilm.embed([LONG], [384])


@pytest.mark.parametrize(
    ("st_pooling", "subfolder", "expected"),
    [("lasttoken", "", "last_token"), ("mean", "0_Transformer", "mean")],
)
def test_sentence_transformers_layout_matches_sentence_transformers(
    tiny_qwen3_path: Path, tmp_path: Path, st_pooling: str, subfolder: str, expected: str
) -> None:
    layout = write_sentence_transformers_layout(
        tiny_qwen3_path, tmp_path / "st", pooling_mode=st_pooling, subfolder=subfolder
    )
    model = _load_cpu(ModelSettings(name_or_path=str(layout)))
    assert model.pooling == expected  # the folder's pooling config wins over the Qwen3 rule
    room = model.max_length - model.tokenizer.num_special_tokens  # the layout's max_seq_length
    texts = [t for t in [*TEXTS, LONGEST] if model.tokenizer.count_tokens(t) <= room]
    assert len(texts) >= 4  # longer texts are refused here, where sentence-transformers truncates
    reference = SentenceTransformer(str(layout), device="cpu").encode(texts, normalize_embeddings=True)
    assert _cosines(model.embed(texts, [64])[64], reference).min() >= 0.9999


def test_unsupported_sentence_transformers_pooling_needs_an_explicit_setting(
    tiny_qwen3_path: Path, tmp_path: Path
) -> None:
    layout = write_sentence_transformers_layout(tiny_qwen3_path, tmp_path / "st", pooling_mode="max")
    with pytest.raises(ConfigError, match=r"set model\.pooling"):
        _load_cpu(ModelSettings(name_or_path=str(layout)))
    assert _load_cpu(ModelSettings(name_or_path=str(layout), pooling="mean")).pooling == "mean"


# --- Matryoshka dims, shapes, errors -----------------------------------------------------------


def test_lower_dims_are_normalized_prefixes_of_the_native_vector(qwen: EmbeddingModel) -> None:
    vectors = qwen.embed(TEXTS, [64, 32, 16])
    assert sorted(vectors) == [16, 32, 64]
    for dim, array in vectors.items():
        assert array.shape == (len(TEXTS), dim) and array.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-5)
        # The native vector is unit length, so its normalized prefix has the same direction as
        # the normalized prefix of the raw pooled vector.
        np.testing.assert_allclose(array, _normalize(vectors[64][:, :dim]), atol=1e-6)


def test_empty_input_gives_empty_arrays(qwen: EmbeddingModel) -> None:
    vectors = qwen.embed([], [64, 16])
    assert vectors[64].shape == (0, 64) and vectors[16].shape == (0, 16)
    assert vectors[16].dtype == np.float32


def test_invalid_inputs_are_rejected(qwen: EmbeddingModel) -> None:
    with pytest.raises(ConfigError, match=r"\[65\] are not integers in 1\.\.64"):
        qwen.embed(["text"], [65])
    with pytest.raises(ConfigError, match=r"\[0\] are not integers in 1\.\.64"):
        qwen.embed([], [0])
    with pytest.raises(ValueError, match="0 tokens"):
        qwen.embed_ids([[1, 2], []], [64])
    with pytest.raises(ValueError, match="513 tokens"):
        qwen.embed_ids([[1] * 513], [64])


def test_bfloat16_on_cpu_stays_close_to_float32(tiny_qwen3_path: Path, qwen: EmbeddingModel) -> None:
    model = _load_cpu(ModelSettings(name_or_path=str(tiny_qwen3_path), dtype="bfloat16"))
    assert model.dtype == "bfloat16" and model.info().dtype == "bfloat16"
    vectors = model.embed(TEXTS, [64])[64]
    assert vectors.dtype == np.float32
    assert _cosines(vectors, qwen.embed(TEXTS, [64])[64]).min() >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_runs_bfloat16_and_stays_close_to_cpu(tiny_qwen3_path: Path, qwen: EmbeddingModel) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path)))
    assert (model.device, model.dtype) == ("cuda", "bfloat16")
    texts = [*TEXTS, LONGEST]
    vectors = model.embed(texts, [64, 16])
    expected = qwen.embed(texts, [64, 16])
    for dim in (64, 16):
        assert vectors[dim].dtype == np.float32 and vectors[dim].shape == (len(texts), dim)
        assert _cosines(vectors[dim], expected[dim]).min() >= 0.99


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _load_cpu(ModelSettings(name_or_path=str(tmp_path / "nowhere")))


# --- packaging ---------------------------------------------------------------------------------


def test_model_info_unpickles_without_torch(minilm: EmbeddingModel) -> None:
    # The driver receives ModelInfo from actors and must not need torch to read it.
    code = (
        "import pickle, sys; info = pickle.loads(sys.stdin.buffer.read()); "
        "assert info.native_dim == 384; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(minilm.info()), check=True, env=env, cwd=REPO_ROOT
    )


def test_tiny_model_build_is_deterministic(tiny_qwen3_path: Path, tmp_path: Path) -> None:
    again = build_tiny_qwen3(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_qwen3_path / name).read_bytes()
