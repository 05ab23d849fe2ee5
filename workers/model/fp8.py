"""FP8 (e4m3) linear layers for ``model.dtype = "fp8"`` on GPUs with FP8 tensor cores.

After the model is loaded in bfloat16, every ``nn.Linear`` of its transformer blocks (attention
q/k/v/o and the MLP) becomes an :class:`Fp8Linear`: the weight is quantized once to
``float8_e4m3fn`` with one scale per output channel (row-wise), each input is quantized per token
(row-wise) at every call, and the product runs through ``torch._scaled_mm``, which applies both
scales and writes bfloat16.  Embeddings, norms, attention itself and any head stay in bfloat16,
and pooling, the Matryoshka cut and normalization run as for bf16 (float32 at the end).

``torch._scaled_mm`` with row-wise scales wants (torch 2.11 - 2.13, ``ScaledBlas.cpp``): both
operands ``float8_e4m3fn``, the first ``(M, K)`` row-major and the second ``(K, N)`` column-major,
K and N multiples of 16, ``scale_a`` float32 ``(M, 1)`` and ``scale_b`` float32 ``(1, N)``, both
contiguous; on CUDA a GPU of compute capability 8.9 or newer.  A linear whose sizes are not
multiples of 16 keeps its bfloat16 weights (see :class:`Fp8Summary`).  The CPU build of torch
runs the same call, which is what the CPU tests check the arithmetic with; the worker itself
refuses fp8 off such a GPU (:func:`require_fp8`), since there it would be slower, not faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from workers.errors import ConfigError

E4M3_MAX = 448.0
"""Largest finite ``float8_e4m3fn`` value: a row's largest magnitude is scaled onto it."""
FP8_CAPABILITY = (8, 9)
"""Lowest CUDA compute capability with FP8 tensor cores (Ada 8.9; Hopper is 9.0)."""
_AMAX_FLOOR = 1e-12  # an all-zero row gets this scale instead of a division by zero
_ALIGNMENT = 16  # K and N of torch._scaled_mm

log = logging.getLogger(__name__)


def require_fp8(device: str) -> None:
    """Raise ConfigError unless ``device`` is a CUDA GPU with FP8 tensor cores (capability >= 8.9)."""
    need = (
        "model.dtype = 'fp8' needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or "
        "newer: L4, L40S, H100, H200, B200)"
    )
    if not device.startswith("cuda"):
        raise ConfigError(f"{need}; this embedder runs on {device!r}. Use model.dtype = 'auto' there.")
    if torch.version.hip:
        raise ConfigError(f"{need}; this torch is a ROCm build, whose FP8 path is not built here.")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(
            f"{need}; {device} is {name}, compute capability {capability[0]}.{capability[1]}. "
            "Use model.dtype = 'bfloat16' there."
        )


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (M, K) as e4m3 values ``q`` and float32 scales ``s`` (M, 1) with ``x ~= q * s`` row by row.

    Each row's largest magnitude maps onto :data:`E4M3_MAX`, so no value saturates and the row
    keeps e4m3's full relative precision (3 mantissa bits) whatever its range.
    """
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=_AMAX_FLOOR) / E4M3_MAX
    # The clamp only catches float rounding just past the top (a cast past 448 would give NaN).
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class Fp8Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored in e4m3 per output channel and ``x`` quantized per token.

    ``fast_accumulation`` is ``torch._scaled_mm``'s ``use_fast_accum``: on Hopper, the tensor cores'
    own accumulator all the way (the inference setting of torchao and vLLM) instead of periodic
    promotion to float32.  Output dtype: the input's (bfloat16 in a model loaded with fp8).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        fast_accumulation: bool = True,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.fast_accumulation = fast_accumulation
        self.register_buffer("weight", weight)  # (N, K) e4m3, row-major: weight.t() is column-major
        self.register_buffer("weight_scale", weight_scale)  # (1, N) float32
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fast_accumulation: bool = True) -> Fp8Linear:
        """``linear``'s weights quantized once, per output channel (its own weights are not kept)."""
        with torch.no_grad():
            weight, scale = quantize_rows(linear.weight)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, scale.reshape(1, -1).contiguous(), bias, fast_accumulation=fast_accumulation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        q, scale = quantize_rows(rows)
        out = torch._scaled_mm(
            q,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=x.dtype,
            use_fast_accum=self.fast_accumulation,
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-wise"


def reference_fp8_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What :class:`Fp8Linear` computes, in float32 without ``torch._scaled_mm``: quantize both
    operands row-wise, dequantize, multiply (for tests of the arithmetic)."""
    q_w, s_w = quantize_rows(linear.weight.detach())
    q_x, s_x = quantize_rows(x.reshape(-1, linear.in_features))
    out = (q_x.float() * s_x) @ (q_w.float() * s_w).t()
    if linear.bias is not None:
        out = out + linear.bias.float()
    return out.reshape(*x.shape[:-1], linear.out_features)


@dataclass(frozen=True)
class Fp8Summary:
    """What :func:`use_fp8_linears` changed: how many linears run in FP8, which stayed as they were."""

    quantized: int
    kept: tuple[str, ...]
    """Linears of the blocks left in their dtype because a size is not a multiple of 16."""


def use_fp8_linears(model: nn.Module, *, bf16_blocks: int = 0, fast_accumulation: bool = True) -> Fp8Summary:
    """Replace, in place, every ``nn.Linear`` inside ``model``'s transformer blocks by an :class:`Fp8Linear`,
    except in the first ``bf16_blocks`` blocks.

    The blocks are the first ``nn.ModuleList`` with ``config.num_hidden_layers`` entries
    (``layers`` of a Qwen3 model, ``encoder.layer`` of a BERT): embeddings, norms, poolers and heads
    outside them are never touched.  Raises ConfigError when the model has no such list.
    """
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    blocks = next(
        (m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth and depth), None
    )
    if blocks is None:
        raise ConfigError(
            f"model.dtype = 'fp8' found no list of {depth} transformer blocks in {type(model).__name__}"
        )
    quantized = 0
    kept: list[str] = []
    for index, block in enumerate(blocks):
        if index < bf16_blocks:
            continue
        for name, linear in list(block.named_modules()):
            if not isinstance(linear, nn.Linear):
                continue
            if linear.in_features % _ALIGNMENT or linear.out_features % _ALIGNMENT:
                kept.append(f"{index}.{name}")
                continue
            parent_name, _, attribute = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, attribute, Fp8Linear.from_linear(linear, fast_accumulation=fast_accumulation))
            quantized += 1
    if kept:
        log.warning("fp8: %d linear(s) keep their dtype, sizes not multiples of 16: %s", len(kept), kept[:8])
    return Fp8Summary(quantized=quantized, kept=tuple(kept))
