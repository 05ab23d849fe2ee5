"""Fused q/k/v and gate/up projections give what the separate ones give (tiny Qwen3; CPU, or CUDA when
there is one: tests/perf/run_device_bench.sh runs this module there without the service fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.models import SAMPLE_TEXTS
from torch import nn

from workers.model.embedding_model import EmbeddingModel
from workers.model.fused import FusedAttention, FusedMlp, concatenated, fuse_projections
from workers.settings import ModelSettings

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 on CPU; bf16 on a GPU, where a wider GEMM may sum in another order.
MIN_COSINE = 0.999 if DEVICE == "cuda" else 0.99999
TEXTS = [*SAMPLE_TEXTS, " ".join(SAMPLE_TEXTS)]


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.models import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-fused"))


def _blocks(model: EmbeddingModel) -> list[Any]:
    layers: Any = model.module.layers
    return list(layers)


def _load(path: Path, **settings: object) -> EmbeddingModel:
    return EmbeddingModel.load(ModelSettings.model_validate({"name_or_path": str(path), **settings}), DEVICE)


@pytest.mark.parametrize("packing", ["on", "off"])
def test_fused_projections_embed_as_the_separate_ones(tiny_qwen3: Path, packing: str) -> None:
    fused = _load(tiny_qwen3, packing=packing)
    separate = _load(tiny_qwen3, packing=packing, fuse_projections=False)
    assert isinstance(_blocks(fused)[0].self_attn, FusedAttention)
    assert not isinstance(_blocks(separate)[0].self_attn, FusedAttention)
    got, expected = fused.embed(TEXTS, [64, 16]), separate.embed(TEXTS, [64, 16])
    for dim in (64, 16):
        assert float((got[dim] * expected[dim]).sum(axis=1).min()) >= MIN_COSINE
    # Batched as one pass == each text alone, through the fused layers too.
    alone = np.concatenate([fused.embed([text], [64])[64] for text in TEXTS])
    assert float((got[64] * alone).sum(axis=1).min()) >= MIN_COSINE


def test_each_block_holds_one_qkv_and_one_gate_up_layer(tiny_qwen3: Path) -> None:
    loaded = _load(tiny_qwen3)
    model, config = loaded.module, loaded.module.config
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for index in range(config.num_hidden_layers):
        block = _blocks(loaded)[index]
        assert isinstance(block.mlp, FusedMlp)
        assert block.self_attn.qkv_proj.out_features == q + 2 * kv
        assert block.mlp.gate_up_proj.out_features == 2 * config.intermediate_size
        assert {name for name in linears if name.startswith(f"layers.{index}.")} == {
            f"layers.{index}.self_attn.qkv_proj",
            f"layers.{index}.self_attn.o_proj",
            f"layers.{index}.mlp.gate_up_proj",
            f"layers.{index}.mlp.down_proj",
        }


@pytest.mark.parametrize("bias", [False, True])
def test_a_concatenated_linear_gives_its_parts_outputs_side_by_side(bias: bool) -> None:
    torch.manual_seed(0)
    parts = [nn.Linear(32, width, bias=bias) for width in (48, 16, 16)]
    x = torch.randn(5, 32)
    fused = concatenated(parts)
    torch.testing.assert_close(fused(x), torch.cat([part(x) for part in parts], dim=-1))


def test_models_other_than_qwen3_are_left_as_loaded() -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    before = {name: type(module) for name, module in model.named_modules()}
    assert fuse_projections(model) == 0
    assert {name: type(module) for name, module in model.named_modules()} == before


def test_unmerged_adapters_keep_the_separate_projections(tiny_qwen3: Path, tmp_path: Path) -> None:
    from helpers.models import write_lora_adapter

    adapter = write_lora_adapter(tiny_qwen3, tmp_path / "legal", seed=3)
    model = _load(tiny_qwen3, adapters={"legal": str(adapter)})
    assert not isinstance(_blocks(model)[0].self_attn, FusedAttention)
    assert model.embed(TEXTS[:2], [64], adapter="legal")[64].shape == (2, 64)


def test_fused_attention_refuses_a_key_value_cache(tiny_qwen3: Path) -> None:
    model = _load(tiny_qwen3)
    module: Any = model.module
    hidden = torch.zeros(1, 3, module.config.hidden_size, device=DEVICE)
    positions = module.rotary_emb(hidden, torch.arange(3, device=DEVICE)[None])
    with pytest.raises(ValueError, match="without a key/value cache"):
        _blocks(model)[0].self_attn(hidden, positions, None, past_key_values=object())
