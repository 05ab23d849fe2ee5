"""Pooling: how a model's token states become one vector per input.

Every function takes the last hidden states ``(batch, seq, hidden)`` and the attention mask
``(batch, seq)`` (1 = real token) and returns float32 ``(batch, hidden)``.  Real tokens are
found from the mask, never from token ids, so the functions work for left and right padding
alike.  Every row must hold at least one real token.
"""

from __future__ import annotations

from typing import Literal

import torch

PoolingMode = Literal["last_token", "mean", "cls"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states."""
    real = mask.bool().unsqueeze(-1)
    # where(), not a product with the mask: a padded position's state may be NaN (a query with
    # nothing to attend to), and NaN * 0 is NaN.
    summed = torch.where(real, hidden.to(torch.float32), 0.0).sum(dim=1)
    return summed / real.sum(dim=1).clamp(min=1).to(torch.float32)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of each row's last real token (for Qwen3-Embedding: the appended EOS)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), positions, -1).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].to(torch.float32)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of each row's first real token (BERT's [CLS])."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask.bool(), positions, mask.shape[1]).amin(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first].to(torch.float32)


_POOLERS = {"last_token": last_token_pool, "mean": mean_pool, "cls": cls_pool}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Pool with ``mode``."""
    return _POOLERS[mode](hidden, mask)
