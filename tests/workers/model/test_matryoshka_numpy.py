"""The numpy cut (for a remote endpoint's full vectors) is the torch cut (the actors'), zero rows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.errors import ConfigError
from workers.model.matryoshka import cut_and_normalize, cut_and_normalize_array


def test_the_numpy_cut_equals_the_torch_cut() -> None:
    full = np.random.default_rng(0).standard_normal((9, 64)).astype(np.float32) * 7
    full[3] = 0.0
    arrays = cut_and_normalize_array(full, (64, 32, 1))
    tensors = cut_and_normalize(torch.from_numpy(full), (64, 32, 1))
    for dim in (64, 32, 1):
        assert arrays[dim].dtype == np.float32 and arrays[dim].shape == (9, dim)
        np.testing.assert_allclose(arrays[dim], tensors[dim].numpy(), rtol=1e-6, atol=1e-7)
    assert not np.isnan(arrays[32]).any() and not arrays[32][3].any()


def test_the_numpy_cut_refuses_dims_outside_the_vector() -> None:
    with pytest.raises(ConfigError):
        cut_and_normalize_array(np.ones((2, 8), dtype=np.float32), (9,))
