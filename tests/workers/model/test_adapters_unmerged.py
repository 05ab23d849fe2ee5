"""Several LoRA adapters unmerged on one model: each pass gets its adapter's vectors, the base stays base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.models import write_lora_adapter
from safetensors.torch import load_file, save_file

from workers.errors import ConfigError, UnknownAdapter
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings

pytest.importorskip("peft")

TEXTS = ["hello world", "a longer text about streaming embeddings into replicas", "x"]


@pytest.fixture(scope="module")
def adapters(tiny_qwen3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "legal": write_lora_adapter(tiny_qwen3_path, root / "legal", seed=11),
        "medical": write_lora_adapter(tiny_qwen3_path, root / "medical", seed=12, use_rslora=True),
    }


def load(base: Path, **settings: object) -> EmbeddingModel:
    return EmbeddingModel.load(
        ModelSettings.model_validate({"name_or_path": str(base), "dtype": "float32", **settings}),
        device="cpu",
    )


def vectors(model: EmbeddingModel, adapter: str | None = None) -> np.ndarray:
    native = model.info().native_dim
    return model.embed(TEXTS, [native], adapter)[native]


@pytest.fixture(scope="module")
def multi(tiny_qwen3_path: Path, adapters: dict[str, Path]) -> EmbeddingModel:
    return load(tiny_qwen3_path, adapters={name: str(path) for name, path in adapters.items()})


@pytest.mark.parametrize("name", ["legal", "medical"])
def test_each_adapter_unmerged_gives_the_vectors_of_the_model_with_it_merged(
    tiny_qwen3_path: Path, adapters: dict[str, Path], multi: EmbeddingModel, name: str
) -> None:
    merged = vectors(load(tiny_qwen3_path, lora_path=str(adapters[name])))
    ours = vectors(multi, name)
    np.testing.assert_allclose(ours, merged, atol=1e-5)
    assert float(np.min(np.sum(ours * merged, axis=1))) >= 0.9999


def test_the_base_model_is_untouched_and_the_adapters_differ(
    tiny_qwen3_path: Path, multi: EmbeddingModel
) -> None:
    base = vectors(load(tiny_qwen3_path))
    np.testing.assert_allclose(vectors(multi), base, atol=1e-6)
    legal, medical = vectors(multi, "legal"), vectors(multi, "medical")
    assert float(np.abs(legal - base).max()) > 1e-2
    assert float(np.abs(legal - medical).max()) > 1e-2
    # A pass with an adapter leaves none active behind it.
    np.testing.assert_allclose(vectors(multi), base, atol=1e-6)


def test_packed_passes_apply_the_adapter_too(
    tiny_qwen3_path: Path, adapters: dict[str, Path], multi: EmbeddingModel
) -> None:
    packed = load(tiny_qwen3_path, packing="on", adapters={"legal": str(adapters["legal"])})
    assert packed.packed
    np.testing.assert_allclose(vectors(packed, "legal"), vectors(multi, "legal"), atol=1e-5)


def test_the_model_names_its_adapters_and_refuses_an_unknown_one(
    multi: EmbeddingModel, adapters: dict[str, Path]
) -> None:
    labels = multi.info().adapters
    assert sorted(labels) == ["legal", "medical"]
    assert labels["legal"].startswith(f"{adapters['legal']}@")
    with pytest.raises(UnknownAdapter, match="no LoRA adapter 'nope'"):
        vectors(multi, "nope")


def test_an_adapter_for_another_base_shape_is_refused_at_load(
    tiny_qwen3_path: Path, minilm_path: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="another base model"):
        load(minilm_path, adapters={"legal": str(adapters["legal"])})
    # Same layer names, another width: one lora_A reads 32 inputs where the layer has 64.
    folder = tmp_path / "narrow"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((adapters["legal"] / "adapter_config.json").read_bytes())
    tensors = load_file(str(adapters["legal"] / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = tensors[key][:, :32].contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="another base model"):
        load(tiny_qwen3_path, adapters={"legal": str(adapters["legal"]), "narrow": str(folder)})


def test_adapter_settings_are_checked(adapters: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"not one of model\.adapters"):
        ModelSettings(adapters={"legal": str(adapters["legal"])}, adapter="medical")
    with pytest.raises(ValueError, match="adapter name"):
        ModelSettings(adapters={"a:b": str(adapters["legal"])})


@pytest.mark.slow  # about a minute of tracing on two CPU cores
def test_a_compiled_model_switches_adapters_between_passes(
    tiny_qwen3_path: Path, adapters: dict[str, Path], multi: EmbeddingModel
) -> None:
    """Dynamo guards on the active adapter: one graph per adapter, none reused for another.  (On CUDA
    the model compiles with inductor; aot_eager traces the same graphs without a C++ build here.)"""
    import torch
    from torch._dynamo.utils import counters

    compiled = load(tiny_qwen3_path, adapters={name: str(path) for name, path in adapters.items()})
    torch._dynamo.reset()
    counters.clear()
    compiled._forward = torch.compile(compiled.module, dynamic=True, backend="aot_eager")
    for adapter in [None, "legal", "medical", "legal", None, "medical"]:
        np.testing.assert_allclose(vectors(compiled, adapter), vectors(multi, adapter), atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 3
