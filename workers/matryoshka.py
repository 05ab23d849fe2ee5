"""Matryoshka cuts: the first ``dim`` components of an embedding, renormalized.

A Matryoshka-trained model front-loads meaning into the leading components, so the prefix
of a full embedding is itself an embedding of the same text, once brought back to unit length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

_EPS = 1e-12


def cut_and_normalize(full: torch.Tensor, dims: Sequence[int]) -> dict[int, torch.Tensor]:
    """Map each of ``dims`` to ``full[..., :dim]`` with every row L2-normalized, in float32.

    The cut comes first, then the normalization, so ``full`` need not be normalized.  A zero
    row stays zero (no NaN).  The results stay on ``full``'s device.  Raises ValueError for a
    dim below 1 or above ``full.shape[-1]``.
    """
    width = full.shape[-1]
    invalid = [dim for dim in dims if not 1 <= dim <= width]
    if invalid:
        raise ValueError(f"Matryoshka dims {invalid} are outside 1..{width}")
    full = full.to(torch.float32)
    return {dim: functional.normalize(full[..., :dim], p=2.0, dim=-1, eps=_EPS) for dim in dims}
