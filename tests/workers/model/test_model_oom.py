"""EmbeddingModel turns an out-of-memory of its forward pass into ForwardOutOfMemory; the device
script's driver (workers.bench.oom_recovery) recovers from one on the tiny model on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers.bench import oom_recovery
from workers.errors import ForwardOutOfMemory
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings


def test_an_out_of_memory_in_the_forward_pass_is_raised_typed_with_the_batch_cost(
    tiny_qwen3_path: Path,
) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path), packing="off"), device="cpu")
    ids = model.encode_ids(["a short text", "a somewhat longer text than that one"])

    def hook(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    handle = model.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(ForwardOutOfMemory) as caught:
            model.embed_ids(ids, (16,))
    finally:
        handle.remove()
    error = caught.value
    assert error.retriable and error.cost == 2 * max(len(row) for row in ids)
    assert isinstance(error.__cause__, torch.OutOfMemoryError) and error.__cause__.__traceback__ is None
    assert "over 2 input(s)" in str(error) and "Tried to allocate 2.00 GiB" in str(error)
    assert model.embed_ids(ids, (16,))[16].shape == (2, 16)  # the model works on afterwards


def test_other_errors_of_the_model_propagate_as_they_are(tiny_qwen3_path: Path) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path), packing="off"), device="cpu")

    def hook(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise RuntimeError("index out of range in self")

    handle = model.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="index out of range"):
            model.embed_ids(model.encode_ids(["text"]), (16,))
    finally:
        handle.remove()


def test_the_device_driver_recovers_from_an_injected_oom_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "oom.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--texts", "24", "--length", "80"]
    assert oom_recovery.main([*argv, "--inject-oom-above", "500", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["passed"] and result["device"] == "cpu"
    assert result["out_of_memory"] and result["forward_passes"]["oom_splits"] >= 2
    assert result["budget"]["after"] < result["budget"]["configured"] == 24 * 80
    assert result["failed_texts"] == 0 and result["min_cosine_vs_alone"] >= 0.999
    assert np.isfinite(result["batched_seconds"])
