"""Matryoshka cuts: the first ``dim`` components of an embedding, renormalized, and which dims are valid.

A Matryoshka-trained model front-loads meaning into the leading components, so the prefix
of a full embedding is itself an embedding of the same text, once brought back to unit length.
:func:`validate_dims` is the one rule for the dimensions anything may ask for (the replicas at
start-up, every embed call, the API's ``dimensions``); importing this module does not import torch.
:func:`cut_and_normalize` (torch, in the actors) and :func:`cut_and_normalize_array` (numpy, for full
vectors that a remote endpoint sent) apply the same rule with the same epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from workers.errors import ConfigError

if TYPE_CHECKING:
    import torch

_EPS = 1e-12


def validate_dims(dims: Sequence[int], native_dim: int, what: str = "embedding dims") -> tuple[int, ...]:
    """``dims`` as a tuple if it is non-empty and every entry is an integer in ``1..native_dim``;
    else ConfigError naming ``what`` and the offending entries."""
    if not dims:
        raise ConfigError(f"{what}: at least one dimension is needed")
    invalid = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= native_dim]
    if invalid:
        raise ConfigError(
            f"{what} {list(invalid)} are not integers in 1..{native_dim} (the model's native "
            f"dimension); use values <= {native_dim}"
        )
    return tuple(dims)


def cut_and_normalize(full: torch.Tensor, dims: Sequence[int]) -> dict[int, torch.Tensor]:
    """Map each of ``dims`` to ``full[..., :dim]`` with every row L2-normalized, in float32.

    The cut comes first, then the normalization, so ``full`` need not be normalized.  A zero
    row stays zero (no NaN).  The results stay on ``full``'s device.  Raises ConfigError for
    dims that :func:`validate_dims` refuses for ``full.shape[-1]``.
    """
    from torch.nn import functional

    validate_dims(dims, full.shape[-1])
    full = full.float()
    return {dim: functional.normalize(full[..., :dim], p=2.0, dim=-1, eps=_EPS) for dim in dims}


def cut_and_normalize_array(full: np.ndarray, dims: Sequence[int]) -> dict[int, np.ndarray]:
    """:func:`cut_and_normalize` on a numpy ``(n, native)`` array: each of ``dims`` maps to
    ``full[:, :dim]`` with every row L2-normalized (cut first, so ``full`` need not be normalized,
    nor normalized by anyone's rule), as new float32 arrays.  A zero row stays zero (no NaN).
    Raises ConfigError for dims that :func:`validate_dims` refuses for ``full.shape[-1]``."""
    validate_dims(dims, full.shape[-1])
    full = np.asarray(full, dtype=np.float32)
    out: dict[int, np.ndarray] = {}
    for dim in dims:
        prefix = full[..., :dim]
        norms = np.linalg.norm(prefix, axis=-1, keepdims=True)
        out[dim] = (prefix / np.maximum(norms, _EPS)).astype(np.float32, copy=False)
    return out
