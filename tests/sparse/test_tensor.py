"""SparseTensor construction, validation, layout and the derived-map cache."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.sparse import DerivedCache, SparseTensor


def _coords(rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_layout_and_seqlens_with_an_empty_batch_element():
    coords = _coords([[0, 1, 1, 1], [0, 2, 1, 1], [2, 0, 0, 0]])
    x = SparseTensor(torch.randn(3, 5), coords)
    assert x.seqlens == [2, 0, 1]
    assert x.batch_size == 3
    assert x.layout == [slice(0, 2), slice(2, 2), slice(2, 3)]
    assert x.cu_seqlens().tolist() == [0, 2, 2, 3]
    assert x.spatial_shape == (3, 2, 2)
    per_batch = torch.tensor([[1.0], [2.0], [3.0]])
    assert x.broadcast_batch(per_batch).flatten().tolist() == [1.0, 1.0, 3.0]


def test_replace_shares_the_cache_new_coords_start_fresh():
    x = SparseTensor(torch.randn(2, 3), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]))
    x.cache.get_or_create("k", lambda: 42)
    y = x.replace(torch.zeros(2, 7))
    assert "k" in y.cache and y.cache is x.cache
    z = x.replace(torch.zeros(1, 3), _coords([[0, 5, 5, 5]]))
    assert "k" not in z.cache
    assert z.spatial_shape == (6, 6, 6)  # computed afresh, not the stale (1, 1, 2)


def test_device_move_starts_a_fresh_cache():
    x = SparseTensor(torch.randn(2, 3), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]))
    x.cache.get_or_create("k", lambda: 1)
    assert "k" in x.to(dtype=torch.float64).cache  # same device, same coords


def test_cache_is_bounded_lru():
    cache = DerivedCache(max_entries=2)
    cache.get_or_create("a", lambda: 1)
    cache.get_or_create("b", lambda: 2)
    cache.get_or_create("a", lambda: 0)  # touch a
    cache.get_or_create("c", lambda: 3)  # evicts b
    assert cache.keys() == ["a", "c"]
    calls = []
    cache.get_or_create("b", lambda: calls.append(1) or 2)
    assert calls == [1]


@pytest.mark.parametrize(
    "coords, feats, message",
    [
        (torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 1), "int32"),
        (torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 1), r"\[N, 4\]"),
        (_coords([[0, 0, 0, 0]]), torch.zeros(2, 1), "one row per voxel"),
        (_coords([[0, -1, 0, 0]]), torch.zeros(1, 1), "non-negative"),
        (_coords([[1, 0, 0, 0], [0, 0, 0, 1]]), torch.zeros(2, 1), "contiguous"),
        (_coords([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]), torch.zeros(3, 1), "contiguous"),
    ],
)
def test_bad_input_raises_clear_value_error(coords, feats, message):
    with pytest.raises(ValueError, match=message):
        SparseTensor(feats, coords)


def test_replace_with_wrong_row_count_raises():
    x = SparseTensor(torch.randn(2, 3), _coords([[0, 0, 0, 0], [0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="one feature row per voxel"):
        x.replace(torch.zeros(3, 3))


def test_empty_tensor():
    x = SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32))
    assert x.seqlens == [] and x.batch_size == 0 and x.spatial_shape == (0, 0, 0)
