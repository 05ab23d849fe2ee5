from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from workers.errors import ConfigError
from workers.model.matryoshka import cut_and_normalize


def _numpy_reference(full: np.ndarray, dim: int) -> np.ndarray:
    prefix = full[:, :dim].astype(np.float64)
    return prefix / np.linalg.norm(prefix, axis=1, keepdims=True)


def test_each_dim_is_the_normalized_prefix_of_the_full_vector() -> None:
    full = torch.randn(7, 64, generator=torch.Generator().manual_seed(0)) * 5
    cuts = cut_and_normalize(full, [64, 32, 8, 1])
    assert sorted(cuts) == [1, 8, 32, 64]
    for dim, cut in cuts.items():
        assert cut.shape == (7, dim)
        assert cut.dtype == torch.float32
        np.testing.assert_allclose(cut.numpy(), _numpy_reference(full.numpy(), dim), rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(1, 48)), elements=st.floats(-1e3, 1e3, width=32)
    ),
    st.data(),
)
def test_rows_are_unit_length_or_stay_zero(full: np.ndarray, data: st.DataObject) -> None:
    dims = data.draw(st.lists(st.integers(1, full.shape[1]), min_size=1, max_size=4))
    for dim, cut in cut_and_normalize(torch.from_numpy(full), dims).items():
        assert not torch.isnan(cut).any()
        norms = torch.linalg.vector_norm(cut, dim=1).numpy()
        prefix_norms = np.linalg.norm(full[:, :dim].astype(np.float64), axis=1)
        # Rows whose prefix is (numerically) zero stay zero; every other row is unit length.
        np.testing.assert_allclose(norms[prefix_norms > 1e-6], 1.0, rtol=1e-5)
        assert (cut.numpy()[prefix_norms == 0] == 0).all()


def test_zero_row_stays_zero() -> None:
    full = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    cuts = cut_and_normalize(full, [3, 2])
    assert cuts[3][0].tolist() == [0.0, 0.0, 0.0]
    assert cuts[2][1].tolist() == pytest.approx([0.6, 0.8])


def test_low_precision_input_is_normalized_in_float32() -> None:
    full = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    cut = cut_and_normalize(full, [16])[16]
    assert cut.dtype == torch.float32
    np.testing.assert_allclose(cut.numpy(), _numpy_reference(full.float().numpy(), 16), rtol=1e-5, atol=1e-6)


def test_cut_of_a_normalized_vector_points_the_same_way() -> None:
    full = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    unit = cut_and_normalize(full, [32])[32]
    np.testing.assert_allclose(
        cut_and_normalize(unit, [8])[8].numpy(), cut_and_normalize(full, [8])[8].numpy(), rtol=1e-5, atol=1e-6
    )


def test_empty_batch_gives_empty_cuts() -> None:
    assert cut_and_normalize(torch.empty(0, 8), [8, 4])[4].shape == (0, 4)


@pytest.mark.parametrize("dim", [0, -1, 9])
def test_dim_outside_the_vector_is_rejected(dim: int) -> None:
    with pytest.raises(ConfigError, match=r"in 1\.\.8"):
        cut_and_normalize(torch.ones(2, 8), [8, dim])
