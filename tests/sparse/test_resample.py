"""Channel↔space subdivision: ordering rules of spec §5.2 and down/up round trips."""
from __future__ import annotations

import torch

from trellis2_core.sparse import SparseTensor, channel_to_space, space_to_channel, subdivide
from trellis2_core.sparse.resample import group_parents


def test_children_are_parent_major_slot_ascending_with_x_least_significant():
    coords = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0]], dtype=torch.int32)
    c = 2
    feats = torch.arange(2 * 8 * c, dtype=torch.float32).view(2, 8 * c)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [6, 1]] = True  # s=1 -> (1,0,0); s=6 -> (0,1,1)
    mask[1, 0] = True
    up = channel_to_space(SparseTensor(feats, coords), mask)
    assert up.coords.tolist() == [[0, 3, 4, 6], [0, 2, 5, 7], [1, 0, 0, 0]]
    assert up.feats.tolist() == [feats[0, 2:4].tolist(), feats[0, 12:14].tolist(), feats[1, 0:2].tolist()]


def _random_voxels(n, res, batches, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = set()
    while len(rows) < n:
        rows.add((int(torch.randint(batches, (1,), generator=g)),
                  *[int(v) for v in torch.randint(res, (3,), generator=g)]))
    coords = torch.tensor(sorted(rows), dtype=torch.int32)
    return coords


def test_down_then_up_round_trip_restores_every_voxel_and_feature():
    coords = _random_voxels(300, 12, batches=3)
    feats = torch.randn(coords.shape[0], 5)
    x = SparseTensor(feats, coords)
    down = space_to_channel(x)
    # parents are unique, sorted lexicographically, and cover every voxel
    keys = [tuple(r) for r in down.coords.tolist()]
    assert keys == sorted(set(keys))
    g = group_parents(x)
    mask = torch.zeros(down.num_voxels, 8, dtype=torch.bool)
    mask[g.parent, g.slot] = True
    up = channel_to_space(down, mask)
    original = {tuple(c): f for c, f in zip(coords.tolist(), feats.tolist())}
    restored = {tuple(c): f for c, f in zip(up.coords.tolist(), up.feats.tolist())}
    assert original == restored
    # absent children were zero-filled in the packed parents
    packed = down.feats.view(-1, 8, 5)
    assert torch.all(packed[~mask] == 0)


def test_subdivide_with_no_children_gives_an_empty_level():
    x = SparseTensor(torch.randn(3, 8), _random_voxels(3, 4, batches=1))
    sub = subdivide(x, torch.zeros(3, 8, dtype=torch.bool))
    assert sub.coords.shape == (0, 4)
