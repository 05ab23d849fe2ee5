"""Packed (unpadded) forward passes give what padded ones give, on the tiny Qwen3 and MiniLM (CPU).

On CUDA with torch's variable-length flash attention the same tests run the flash kernel
(tests/perf/run_device_bench.sh runs them there without the service fixtures, hence the local model
fixture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import SAMPLE_TEXTS

from workers.model.embedding_model import EmbeddingModel
from workers.model.packing import pack, pool_packed
from workers.settings import ModelSettings

TEXTS = SAMPLE_TEXTS
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 on CPU; bf16 on a GPU, where batch shapes change the kernels' rounding.
MIN_COSINE = 0.999 if DEVICE == "cuda" else 0.99999


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.models import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-packing"))


def _load(path: Path | str, packing: str, pooling: str = "auto") -> EmbeddingModel:
    settings = ModelSettings.model_validate(
        {"name_or_path": str(path), "packing": packing, "pooling": pooling}
    )
    return EmbeddingModel.load(settings, device=DEVICE)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())  # rows are unit length


def test_pack_restarts_positions_and_counts_lengths() -> None:
    batch = pack([[5, 6, 7], [8], [9, 10]], "cpu")
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_length == 3


def test_pool_packed_reads_each_segment() -> None:
    hidden = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    assert pool_packed(hidden, cu, "last_token").tolist() == [[4, 5], [6, 7], [10, 11]]
    assert pool_packed(hidden, cu, "cls").tolist() == [[0, 1], [6, 7], [8, 9]]
    assert pool_packed(hidden, cu, "mean").tolist() == [[2, 3], [6, 7], [9, 10]]


@pytest.mark.parametrize("pooling", ["last_token", "mean", "cls"])
def test_packed_equals_padded_on_qwen3(tiny_qwen3: Path, pooling: str) -> None:
    packed, padded = _load(tiny_qwen3, "on", pooling), _load(tiny_qwen3, "off", pooling)
    assert packed.packed and not padded.packed
    ids = padded.encode_ids(TEXTS)
    ours, reference = packed.embed_ids(ids, [64, 16]), padded.embed_ids(ids, [64, 16])
    for dim in (64, 16):
        assert ours[dim].shape == (len(TEXTS), dim) and ours[dim].dtype == np.float32
        assert _min_cosine(ours[dim], reference[dim]) >= MIN_COSINE


def test_packed_batched_equals_single(tiny_qwen3: Path) -> None:
    model = _load(tiny_qwen3, "on")
    ids = model.encode_ids(TEXTS)
    batched = model.embed_ids(ids, [64])[64]
    single = np.concatenate([model.embed_ids([row], [64])[64] for row in ids])
    assert _min_cosine(batched, single) >= MIN_COSINE


@pytest.mark.parametrize("packing", ["on", "off"])
def test_passes_queued_back_to_back_equal_passes_one_at_a_time(tiny_qwen3: Path, packing: str) -> None:
    # On CUDA the later passes reuse the memory of the earlier ones while their copies back are still
    # queued: every pass must still read its own vectors.
    model = _load(tiny_qwen3, packing)
    ids = model.encode_ids(TEXTS)
    batches = [ids[i : i + size] for size in (1, 2, 3) for i in range(0, len(ids), size)]
    waits = [model.launch_ids(batch, [64, 16]) for batch in batches]
    queued = [wait() for wait in waits]
    for batch, out in zip(batches, queued, strict=True):
        alone = model.embed_ids(batch, [64, 16])
        for dim in (64, 16):  # the same batch shape: a mix-up would be far off, rounding is not
            assert out[dim].shape == (len(batch), dim) and _min_cosine(out[dim], alone[dim]) >= 0.99999


def test_auto_packs_only_with_the_cuda_kernel(tiny_qwen3: Path) -> None:
    from workers.model.packing import varlen_kernel_available

    assert _load(tiny_qwen3, "auto").packed == varlen_kernel_available(DEVICE)


def test_models_without_a_packed_path_fall_back_to_padded(minilm_path: Path) -> None:
    model = _load(minilm_path, "on")
    assert not model.packed
    reference = _load(minilm_path, "off")
    assert _min_cosine(model.embed(TEXTS, [384])[384], reference.embed(TEXTS, [384])[384]) >= MIN_COSINE
