"""Neighbour map: reference vs a brute-force dict, Triton (CPU interpreter) vs reference, input checks."""
from __future__ import annotations

import pytest
import torch

from trellis2_kernels import KernelPolicy
from trellis2_kernels.neighbor_map import OFFSETS, build_neighbor_map

REF = KernelPolicy("reference")
TRITON = KernelPolicy("triton")


def brute_force(coords: torch.Tensor) -> torch.Tensor:
    rows = [tuple(r) for r in coords.tolist()]
    where = {r: i for i, r in enumerate(rows)}
    out = torch.full((len(rows), 27), -1, dtype=torch.int32)
    for i, (b, x, y, z) in enumerate(rows):
        for v, (dx, dy, dz) in enumerate(OFFSETS):
            out[i, v] = where.get((b, x + dx, y + dy, z + dz), -1)
    return out


def random_coords(n: int, span: int, batches: tuple[int, ...] = (0,), seed: int = 0, offset: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, span, (n, 4), generator=g, dtype=torch.int32)
    c[:, 0] = torch.tensor(batches, dtype=torch.int32)[torch.randint(0, len(batches), (n,), generator=g)]
    c[:, 1:] += offset
    c = torch.unique(c, dim=0)
    return c[torch.randperm(c.shape[0], generator=g)].contiguous()  # rows in no particular order


CASES = {
    "dense_block": random_coords(400, 6, seed=1),
    "sparse_cloud": random_coords(300, 20, seed=2),
    "batches_with_gap": random_coords(400, 6, batches=(0, 2, 3), seed=3),  # batch 1 is empty
    "single_voxel": torch.tensor([[0, 5, 0, 7]], dtype=torch.int32),
    "far_from_origin": random_coords(200, 5, batches=(1, 4), seed=4, offset=1000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_brute_force(name: str) -> None:
    coords = CASES[name]
    nbr = build_neighbor_map(coords, policy=REF)
    assert nbr.dtype == torch.int32 and nbr.shape == (coords.shape[0], 27)
    assert torch.equal(nbr, brute_force(coords))
    assert torch.equal(nbr[:, 13], torch.arange(coords.shape[0], dtype=torch.int32))


def test_batches_do_not_mix() -> None:
    coords = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]], dtype=torch.int32)
    nbr = build_neighbor_map(coords, policy=REF)
    assert (nbr[0] >= 0).sum() == 1  # only itself: the voxel next to it is in batch 1
    assert nbr[2, 14] == 1 and nbr[1, 12] == 2


def test_huge_coordinates_use_overflow_proof_path() -> None:
    # Per-axis ranges near 2**31 make the mixed-radix key overflow int64, which selects the staged lookup.
    coords = torch.cat([CASES["dense_block"][:100], CASES["dense_block"][100:200] + 2**31 - 10])
    coords = torch.unique(coords, dim=0)
    assert torch.equal(build_neighbor_map(coords, policy=REF), brute_force(coords))


def test_empty() -> None:
    for policy in (REF, None):
        nbr = build_neighbor_map(torch.empty((0, 4), dtype=torch.int32), policy=policy)
        assert nbr.shape == (0, 27) and nbr.dtype == torch.int32


@pytest.mark.parametrize("bad, match", [
    (torch.zeros((3, 4), dtype=torch.int64), "int32"),
    (torch.zeros((3, 4), dtype=torch.float32), "int32"),
    (torch.zeros((3, 3), dtype=torch.int32), r"\[N, 4\]"),
    (torch.zeros((4,), dtype=torch.int32), r"\[N, 4\]"),
    (torch.tensor([[0, -1, 0, 0]], dtype=torch.int32), ">= 0"),
    ([[0, 1, 2, 3]], "torch.Tensor"),
])
def test_bad_input_raises(bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_neighbor_map(bad)


@pytest.mark.usefixtures("triton_interpreter")
class TestTritonInterpreter:
    @pytest.mark.parametrize("name", list(CASES))
    def test_matches_reference(self, name: str) -> None:
        coords = CASES[name]
        assert torch.equal(build_neighbor_map(coords, policy=TRITON), build_neighbor_map(coords, policy=REF))

    def test_both_fill_strategies(self) -> None:
        from trellis2_kernels.neighbor_map.triton_impl import build_neighbor_map_triton

        coords = CASES["batches_with_gap"]
        lo, hi = torch.aminmax(coords, dim=0)
        expected = brute_force(coords)
        for symmetric in (True, False):
            for load_factor in (0.25, 0.9):  # 0.9: long probe runs and wrap-around at the table's end
                nbr = build_neighbor_map_triton(coords, lo.tolist(), hi.tolist(), symmetric=symmetric,
                                                load_factor=load_factor)
                assert torch.equal(nbr, expected), (symmetric, load_factor)

    def test_empty_and_single(self) -> None:
        assert build_neighbor_map(torch.empty((0, 4), dtype=torch.int32), policy=TRITON).shape == (0, 27)
        one = build_neighbor_map(CASES["single_voxel"], policy=TRITON)
        assert one.tolist() == [[-1] * 13 + [0] + [-1] * 13]
