"""Packed (unpadded) forward passes: many texts in one row, attention kept inside each text.

A packed batch is one row of ``sum(lengths)`` tokens with position ids restarting at 0 for every
text and the cumulative sequence lengths ``cu_seqlens`` (``[0, l0, l0 + l1, ...]``).  Attention
runs through :data:`ATTENTION_NAME`, an attention function registered with transformers'
``AttentionInterface``: given ``cu_seq_lens_q`` it attends within each text only (flash
variable-length attention on CUDA, one SDPA call per text elsewhere); without it, it is plain
SDPA, so a model switched to it runs padded batches exactly as before.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from workers.model.pooling import PoolingMode

ATTENTION_NAME = "embedstream_packed"

# Decoders whose transformers implementation takes a per-layer-type mask dict, rotary positions
# from ``position_ids`` and attention through AttentionInterface; the packed path is tested on these.
PACKABLE_MODEL_TYPES = frozenset({"qwen3"})

_varlen_attn: Callable[..., Any] | None
try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # torch without the variable-length flash kernel
    _varlen_attn = None

_VARLEN_PARAMS = (
    frozenset(inspect.signature(_varlen_attn).parameters) if _varlen_attn is not None else frozenset()
)


def varlen_kernel_available(device: str) -> bool:
    """True when ``device`` is CUDA and this torch has ``torch.nn.attention.varlen.varlen_attn``."""
    return device.startswith("cuda") and _varlen_attn is not None


def can_pack(model: PreTrainedModel) -> bool:
    """True when ``model`` runs correctly as a packed row (see :data:`PACKABLE_MODEL_TYPES`).

    Sliding-window attention is excluded: the varlen path here attends to the whole text.
    """
    config = model.config
    return config.model_type in PACKABLE_MODEL_TYPES and not getattr(config, "use_sliding_window", False)


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs of one packed batch, on the device."""

    input_ids: torch.Tensor
    """``(1, total)`` token ids, texts back to back."""
    position_ids: torch.Tensor
    """``(1, total)`` positions, restarting at 0 for every text."""
    cu_seqlens: torch.Tensor
    """``(n + 1,)`` int32 cumulative lengths."""
    max_length: int


def pack(ids: Sequence[Sequence[int]], device: str) -> PackedBatch:
    """Concatenate ``ids`` (each non-empty) into one row; host tensors are pinned on CUDA and copied async."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    cu = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    flat = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(cu[-1]))
    positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
    host = torch.from_numpy(np.stack([flat, positions]))
    cu_host = torch.from_numpy(cu.astype(np.int32))
    if device.startswith("cuda"):
        host, cu_host = host.pin_memory(), cu_host.pin_memory()
    on_device = host.to(device, non_blocking=True)
    return PackedBatch(
        input_ids=on_device[0:1],
        position_ids=on_device[1:2],
        cu_seqlens=cu_host.to(device, non_blocking=True),
        max_length=int(lengths.max()),
    )


def packed_forward(
    forward: Callable[..., Any], layer_types: Sequence[str], batch: PackedBatch
) -> torch.Tensor:
    """Last hidden states ``(total, hidden)`` of a packed batch.

    ``forward`` is a model using :data:`ATTENTION_NAME` (or its compiled form) whose config lists
    ``layer_types``.
    """
    # A dict of ready masks makes transformers skip building a (total x total) mask; the
    # attention function confines each text to itself from cu_seqlens instead.
    no_masks: dict[str, None] = {kind: None for kind in set(layer_types)}
    out = forward(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=no_masks,
        use_cache=False,
        cu_seq_lens_q=batch.cu_seqlens,
        cu_seq_lens_k=batch.cu_seqlens,
        max_length_q=batch.max_length,
        max_length_k=batch.max_length,
    )
    hidden: torch.Tensor = out.last_hidden_state[0]
    return hidden


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Float32 ``(n, hidden)``: each text's last token, first token, or mean over its own tokens."""
    cu = cu_seqlens.long()
    if mode == "last_token":
        return hidden[cu[1:] - 1].to(torch.float32)
    if mode == "cls":
        return hidden[cu[:-1]].to(torch.float32)
    lengths = cu[1:] - cu[:-1]
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    sums = torch.zeros((len(lengths), hidden.shape[-1]), dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, segment, hidden.to(torch.float32))
    return sums / lengths.unsqueeze(1).to(torch.float32)


def _varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **options: Any) -> torch.Tensor:
    """``varlen_attn`` on ``(total, heads, head_dim)`` tensors across torch versions' signatures."""
    assert _varlen_attn is not None
    causal = options.pop("causal")
    if "window_size" in _VARLEN_PARAMS:
        options["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        options["is_causal"] = causal
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            options["enable_gqa"] = True
        else:
            repeats = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(repeats, dim=1)
            value = value.repeat_interleave(repeats, dim=1)
    if "scale" not in _VARLEN_PARAMS:
        options.pop("scale")
    out: torch.Tensor = _varlen_attn(query, key, value, **options)
    return out


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: packed when ``cu_seq_lens_q`` is given, else plain SDPA.

    Inputs are ``(batch, heads, seq, head_dim)``; the output is ``(batch, seq, heads, head_dim)``.
    """
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out, None
    causal = bool(getattr(module, "is_causal", True))
    # (1, heads, total, head_dim) -> (total, heads, head_dim)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    if varlen_kernel_available(str(q.device)):
        max_length = int(kwargs["max_length_q"])
        out = _varlen(
            q,
            k,
            v,
            cu_seq_q=cu_seqlens,
            cu_seq_k=cu_seqlens,
            max_q=max_length,
            max_k=max_length,
            scale=scaling,
            causal=causal,
        )
    else:
        bounds = cu_seqlens.tolist()
        out = torch.cat(
            [
                functional.scaled_dot_product_attention(
                    q[start:end].transpose(0, 1),
                    k[start:end].transpose(0, 1),
                    v[start:end].transpose(0, 1),
                    is_causal=causal,
                    scale=scaling,
                    enable_gqa=k.shape[1] != q.shape[1],
                ).transpose(0, 1)
                for start, end in itertools.pairwise(bounds)
            ]
        )
    return out.unsqueeze(0), None


def use_packed_attention(model: PreTrainedModel) -> None:
    """Register :func:`packed_attention` (idempotent) and switch ``model`` to it."""
    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    # Padded batches through the same function need the same masks as SDPA.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    model.set_attn_implementation(ATTENTION_NAME)
