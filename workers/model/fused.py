"""Fused projections for Qwen3 blocks: q/k/v as one linear layer, gate/up as another.

Each Qwen3 block reads the same normalized hidden states into three attention projections and
into two MLP projections.  One linear layer over the concatenated weights reads its input once and
runs one GEMM instead of three (or two), wider ones, which the tensor cores fill better; under FP8
(:mod:`workers.model.fp8`) each input is also quantized once instead of three times.  Every output
element is the same dot product of the same row of weights as before (row-wise FP8 scales stay per
row), so outputs match the separate projections' up to the GEMM's own summation order.

:func:`fuse_projections` swaps each block's ``self_attn`` and ``mlp`` for :class:`FusedAttention` and
:class:`FusedMlp`, which hold the fused weights and the block's own norms, output projections and
attention function (``config._attn_implementation``, e.g. the packed one of
:mod:`workers.model.packing`).  Only Qwen3 blocks as transformers builds them are fused: anything
else is left as loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3MLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

log = logging.getLogger(__name__)

# Keyword arguments a block may pass for a key/value cache; an embedder runs without one.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "cache")


def concatenated(linears: list[nn.Linear]) -> nn.Linear:
    """One linear layer whose output is the outputs of ``linears`` (same input width) side by side."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    bias = linears[0].bias is not None
    # Built on the meta device and handed the concatenation: no second weight allocated and
    # initialized on the GPU only to be overwritten.
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, device="meta")
    fused.weight = nn.Parameter(weight)
    if bias:
        fused.bias = nn.Parameter(torch.cat([linear.bias.detach() for linear in linears]))
    return fused


class FusedAttention(nn.Module):
    """Qwen3 self-attention with q, k and v from one GEMM; otherwise what ``Qwen3Attention`` computes:
    per-head RMSNorm of q and k, rotary positions, the configured attention function, ``o_proj``.
    Runs without a key/value cache (ValueError if given one)."""

    def __init__(self, attention: Qwen3Attention) -> None:
        super().__init__()
        self.config = attention.config
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.num_key_value_groups = attention.num_key_value_groups
        self.scaling = attention.scaling
        self.attention_dropout = attention.attention_dropout
        self.is_causal = attention.is_causal
        self.sliding_window = attention.sliding_window
        self.q_size = attention.q_proj.out_features
        self.kv_size = attention.k_proj.out_features
        self.qkv_proj = concatenated([attention.q_proj, attention.k_proj, attention.v_proj])
        self.o_proj = attention.o_proj
        self.q_norm = attention.q_norm
        self.k_norm = attention.k_norm

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for name in _CACHE_KWARGS:
            if kwargs.pop(name, None) is not None:
                raise ValueError("fused Qwen3 attention runs without a key/value cache")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = self.qkv_proj(hidden_states).split(
            (self.q_size, self.kv_size, self.kv_size), dim=-1
        )
        query = self.q_norm(query.view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(key.view(hidden_shape)).transpose(1, 2)
        value = value.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        implementation = self.config._attn_implementation
        attend: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = (
            eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        )
        output, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(output), weights


class FusedMlp(nn.Module):
    """Qwen3's gated MLP, ``down(act(gate(x)) * up(x))``, with gate and up from one GEMM."""

    def __init__(self, mlp: Qwen3MLP) -> None:
        super().__init__()
        self.gate_up_proj = concatenated([mlp.gate_proj, mlp.up_proj])
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        out: torch.Tensor = self.down_proj(self.act_fn(gate) * up)
        return out


def fuse_projections(model: PreTrainedModel) -> int:
    """Fuse, in place, the projections of every block of a Qwen3 ``model``; returns how many blocks were
    fused (0 for a model of another kind, left as it was).

    Call it after any LoRA adapter is merged and before FP8 quantization (which then quantizes the fused
    layers); unmerged adapters target the separate projections, so :meth:`EmbeddingModel.load` does not
    call it for a model that will carry them (this function does not check).
    """
    if getattr(model.config, "model_type", None) != "qwen3":
        return 0
    blocks = 0
    for module in list(model.modules()):  # a snapshot: children are replaced on the way
        for name, child in list(module.named_children()):
            if type(child) is Qwen3Attention:
                setattr(module, name, FusedAttention(child))
                blocks += 1
            elif type(child) is Qwen3MLP:
                setattr(module, name, FusedMlp(child))
    if blocks:
        log.info("fused the q/k/v and gate/up projections of %d Qwen3 blocks", blocks)
    return blocks
