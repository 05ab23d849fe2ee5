"""LoRA adapters merged at load: the merged model gives PEFT's unmerged vectors; bad adapters refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.models import write_lora_adapter as write_adapter

from workers.errors import ConfigError
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings

peft = pytest.importorskip("peft")

TEXTS = ["hello world", "a longer text about streaming embeddings into replicas", "x"]


def load(base: Path, adapter: Path | None = None, fuse_projections: bool = True) -> EmbeddingModel:
    settings = ModelSettings(
        name_or_path=str(base),
        dtype="float32",
        lora_path=str(adapter) if adapter else None,
        fuse_projections=fuse_projections,
    )
    return EmbeddingModel.load(settings, device="cpu")


def vectors(model: EmbeddingModel) -> np.ndarray:
    native = model.info().native_dim
    return model.embed(TEXTS, [native])[native]


@pytest.fixture(scope="module")
def adapter(tiny_qwen3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tiny_qwen3_path, tmp_path_factory.mktemp("lora"), seed=1)


def test_merged_adapter_gives_peft_unmerged_vectors(tiny_qwen3_path: Path, adapter: Path) -> None:
    merged = load(tiny_qwen3_path, adapter)  # merged, then its projections fused
    unmerged = load(tiny_qwen3_path, fuse_projections=False)
    base = vectors(unmerged)
    # PEFT injects its LoRA layers into the loaded module tree in place (into the separate projections
    # it targets by name): the same EmbeddingModel now runs base + B @ A on every call, unmerged, which
    # is the reference the merge must reproduce.
    peft.PeftModel.from_pretrained(unmerged._model, str(adapter))
    reference, ours = vectors(unmerged), vectors(merged)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # The adapter matters: vectors moved away from the base model's.
    assert float(np.abs(ours - base).max()) > 1e-2
    label = merged.info().adapter
    assert label is not None and label.startswith(f"{adapter}@") and len(label.rsplit("@", 1)[1]) == 12
    assert unmerged.info().adapter is None


def test_rslora_scale_is_merged_as_peft_runs_it(tiny_qwen3_path: Path, tmp_path: Path) -> None:
    folder = write_adapter(tiny_qwen3_path, tmp_path / "rs", seed=2, use_rslora=True)
    unmerged = load(tiny_qwen3_path, fuse_projections=False)
    peft.PeftModel.from_pretrained(unmerged._model, str(folder))
    np.testing.assert_allclose(vectors(load(tiny_qwen3_path, folder)), vectors(unmerged), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [({"use_dora": True}, "use_dora"), ({"bias": "lora_only"}, "bias"), ({"peft_type": "IA3"}, "only LORA")],
)
def test_an_adapter_that_cannot_be_merged_is_refused(
    tiny_qwen3_path: Path, adapter: Path, tmp_path: Path, config: dict[str, object], message: str
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    data = json.loads((adapter / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**data, **config}))
    with pytest.raises(ConfigError, match=message):
        load(tiny_qwen3_path, folder)


def test_an_adapter_of_another_base_model_is_refused(
    tiny_qwen3_path: Path, minilm_path: Path, adapter: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="another base model"):
        load(minilm_path, adapter)
    with pytest.raises(ConfigError, match="not a PEFT adapter folder"):
        load(tiny_qwen3_path, tmp_path)
