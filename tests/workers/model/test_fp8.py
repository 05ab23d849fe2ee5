"""FP8 linears (``model.dtype = "fp8"``): the quantization arithmetic on CPU, the refusal off FP8 GPUs,
and (on a GPU with FP8) the loaded model against bf16.

CPU torch runs ``torch._scaled_mm`` with row-wise scales, so the same call the GPU makes is checked
here against a float32 reference of the quantize/dequantize steps and against ``nn.Linear``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workers.errors import ConfigError
from workers.model import fp8
from workers.model.embedding_model import EmbeddingModel
from workers.model.fp8 import E4M3_MAX, Fp8Linear, quantize_rows, reference_fp8_linear, use_fp8_linears
from workers.model.loading import compute_dtype
from workers.settings import ModelSettings

TEXTS = [
    "Streaming ingestion reads document events from Kafka.",
    "Matryoshka embeddings keep their meaning when cut.",
    "东京 Москва café 😀",
    "a",
]


def _cosines(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _linear(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
    linear.weight.normal_(0, 0.02)
    return linear


def test_rows_are_scaled_onto_the_e4m3_range_and_round_trip_within_its_precision() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 256) * torch.logspace(-3, 3, 8).unsqueeze(1)  # rows six decades apart
    x[3] = 0.0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (8, 1)
    assert not torch.isnan(q.float()).any()
    top = q.float().abs().amax(dim=1)
    assert torch.equal(top[torch.arange(8) != 3], torch.full((7,), E4M3_MAX))  # every row uses the range
    assert torch.equal(q[3].float(), torch.zeros(256))  # an all-zero row stays zero, no division by zero
    back = q.float() * scale
    rows = torch.arange(8) != 3
    # e4m3 keeps 3 mantissa bits: round to nearest is within 2^-4 of the value (normal range).
    relative = ((back - x).abs() / x.abs().clamp(min=1e-30))[rows]
    normal = x.abs()[rows] >= scale[rows] * 2**-6
    assert relative[normal].max() <= 2**-4 + 1e-6


@pytest.mark.parametrize("bias", [False, True])
def test_fp8_linear_matches_the_float32_reference_and_stays_close_to_nn_linear(bias: bool) -> None:
    linear = _linear(256, 128, bias)
    torch.manual_seed(1)
    x = torch.randn(3, 7, 256)  # leading dims of a padded batch; a packed one is (1, T, K)
    layer = Fp8Linear.from_linear(linear.to(torch.bfloat16))
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (1, 128)
    out = layer(x.to(torch.bfloat16))
    assert out.shape == (3, 7, 128) and out.dtype == torch.bfloat16
    reference = reference_fp8_linear(linear.to(torch.bfloat16), x.to(torch.bfloat16))
    # Same quantized operands, same scales: only the bf16 output rounding differs.
    torch.testing.assert_close(out.float(), reference, rtol=2**-7, atol=1e-3)
    bias_ = None if linear.bias is None else linear.bias.float()
    exact = nn.functional.linear(x, linear.weight.float(), bias_)
    error = (out.float() - exact).norm() / exact.norm()
    assert error < 0.05  # two e4m3 roundings per product: a few percent
    assert _cosines(out.float().reshape(-1, 128), exact.reshape(-1, 128)).min() > 0.998


def test_fp8_linear_takes_a_single_token() -> None:
    linear = _linear(64, 32).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    out = Fp8Linear.from_linear(linear)(x)
    assert out.shape == (1, 1, 32)
    torch.testing.assert_close(out.float(), reference_fp8_linear(linear, x), rtol=2**-7, atol=1e-3)


def test_only_the_blocks_linears_become_fp8(tiny_qwen3_path: Path) -> None:
    settings = ModelSettings(name_or_path=str(tiny_qwen3_path), fuse_projections=False)
    model = EmbeddingModel.load(settings, device="cpu").module
    model.to(torch.bfloat16)
    layers = model.config.num_hidden_layers
    summary = use_fp8_linears(model, bf16_blocks=1)
    assert summary.quantized == 7 * (layers - 1) and summary.kept == ()
    kinds = {name: type(module) for name, module in model.named_modules()}
    assert kinds["layers.0.self_attn.q_proj"] is nn.Linear  # the first block kept in bf16
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert kinds[f"layers.1.self_attn.{name}"] is Fp8Linear
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert kinds[f"layers.1.mlp.{name}"] is Fp8Linear
    assert kinds["embed_tokens"] is nn.Embedding and not isinstance(model.norm, Fp8Linear)


def test_fused_projections_become_fp8_as_one_layer_each(tiny_qwen3_path: Path) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path)), device="cpu").module
    summary = use_fp8_linears(model.to(torch.bfloat16))
    assert summary.quantized == 4 * model.config.num_hidden_layers and summary.kept == ()
    for block in model.layers:
        for linear in (block.self_attn.qkv_proj, block.self_attn.o_proj, block.mlp.gate_up_proj):
            assert isinstance(linear, Fp8Linear)


def test_a_linear_of_unaligned_size_keeps_its_dtype() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.aligned, self.odd = nn.Linear(32, 64), nn.Linear(32, 40)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"num_hidden_layers": 2})()
            self.layers = nn.ModuleList([Block(), Block()])

    model = Model()
    summary = use_fp8_linears(model)
    assert (summary.quantized, summary.kept) == (2, ("0.odd", "1.odd"))
    assert isinstance(model.layers[1].aligned, Fp8Linear) and isinstance(model.layers[1].odd, nn.Linear)


@pytest.mark.parametrize("packing", ["on", "off"])
def test_an_fp8_model_embeds_close_to_bf16_packed_and_padded(tiny_qwen3_path: Path, packing: str) -> None:
    """The model path on CPU (torch's CPU _scaled_mm): what the worker refuses here, built by hand."""
    bf16 = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path)), device="cpu")
    bf16.module.to(torch.bfloat16)
    expected = bf16.embed(TEXTS, [64])[64]
    module = EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path)), device="cpu").module
    use_fp8_linears(module.to(torch.bfloat16))
    model = EmbeddingModel(
        name="tiny-fp8",
        model=module,
        tokenizer=bf16.tokenizer,
        pooling=bf16.pooling,
        device="cpu",
        dtype="fp8",
        packing=packing,  # type: ignore[arg-type]
    )
    assert model.packed == (packing == "on")
    vectors = model.embed(TEXTS, [64, 16])
    assert vectors[64].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[16], axis=1), 1.0, rtol=1e-5)
    # Measured 0.995-0.999 on this 2-layer, 64-wide model (its 64-term dot products are the noisiest).
    assert _cosines(vectors[64], expected).min() > 0.98


def test_fp8_is_refused_on_the_cpu_with_what_it_needs(tiny_qwen3_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compute capability 8\.9 or newer.*runs on 'cpu'"):
        compute_dtype("fp8", "cpu")
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU with FP8 tensor cores"):
        EmbeddingModel.load(ModelSettings(name_or_path=str(tiny_qwen3_path), dtype="fp8"), device="cpu")


def test_fp8_is_refused_on_a_gpu_older_than_ada(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp8.torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(fp8.torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"A100-SXM4-80GB, compute capability 8\.0"):
        compute_dtype("fp8", "cuda")
    monkeypatch.setattr(fp8.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert compute_dtype("fp8", "cuda:0") == "bfloat16"
    monkeypatch.setattr(fp8.torch.version, "hip", "6.4")
    with pytest.raises(ConfigError, match="ROCm build"):
        compute_dtype("fp8", "cuda")


def _has_fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= fp8.FP8_CAPABILITY


@pytest.mark.skipif(not _has_fp8_gpu(), reason="needs a CUDA GPU of compute capability >= 8.9")
@pytest.mark.parametrize("compile", [False, True])
def test_gpu_fp8_model_stays_close_to_bf16(tiny_qwen3_path: Path, compile: bool) -> None:
    settings = ModelSettings(name_or_path=str(tiny_qwen3_path), compile=compile)
    bf16 = EmbeddingModel.load(settings)
    model = EmbeddingModel.load(settings.model_copy(update={"dtype": "fp8"}))
    assert (model.device, model.dtype, model.info().dtype) == ("cuda", "fp8", "fp8")
    assert isinstance(model.module.layers[0].mlp.down_proj, Fp8Linear)
    texts = [*TEXTS, " ".join(TEXTS * 20)]
    vectors, expected = model.embed(texts, [64, 16]), bf16.embed(texts, [64, 16])
    for dim in (64, 16):
        assert vectors[dim].dtype == np.float32 and vectors[dim].shape == (len(texts), dim)
        assert _cosines(vectors[dim], expected[dim]).min() > 0.98
