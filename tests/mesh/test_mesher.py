"""Flexible dual grid mesher (spec §8.1): the golden case exactly, plus hand-made quads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trellis2_core.conformance.case import load_case
from trellis2_core.conformance.cases_decoders import run_mesher
from trellis2_core.mesh.mesher import flexible_dual_grid_to_mesh
from trellis2_core.mesh.types import Mesh, PbrVoxels, z_up_to_y_up

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden"


def test_golden_mesher_512_is_exact():
    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN}")
    case = load_case(GOLDEN, "mesher_512", "mesher", model=lambda key: None)
    got = run_mesher(case)
    assert torch.equal(got["output.faces"], case.expected["output.faces"])
    assert got["output.faces"].dtype == torch.int32
    tol = case.meta["tolerance"]["output.vertices"]
    gold = case.expected["output.vertices"]
    assert got["output.vertices"].shape == gold.shape
    assert bool(((got["output.vertices"] - gold).abs() <= tol["atol"] + tol["rtol"] * gold.abs()).all())


def _block():
    """The 2×2×2 block of voxels at (0..1)^3 in lexicographic row order: row = 4x + 2y + z."""
    coords = torch.tensor([[x, y, z] for x in range(2) for y in range(2) for z in range(2)], dtype=torch.int32)
    return coords, torch.full((8, 3), 0.5), torch.zeros(8, 3, dtype=torch.bool)


@pytest.mark.parametrize("axis,expected_quad", [
    (0, [0, 1, 3, 2]),  # x edge: (0,0,0) (0,0,1) (0,1,1) (0,1,0)
    (1, [0, 4, 5, 1]),  # y edge: (0,0,0) (1,0,0) (1,0,1) (0,0,1)
    (2, [0, 2, 6, 4]),  # z edge: (0,0,0) (0,1,0) (1,1,0) (1,0,0)
])
def test_one_flagged_edge_gives_one_quad_split_by_weights(axis, expected_quad):
    coords, dual, flags = _block()
    flags[0, axis] = True
    q0, q1, q2, q3 = expected_quad
    w = torch.ones(8, 1)
    w[q0] = 3.0  # w0·w2 > w1·w3 → diagonal q0–q2
    mesh = flexible_dual_grid_to_mesh(coords, dual, flags, w, grid_size=2)
    assert mesh.faces.tolist() == [[q0, q1, q2], [q0, q2, q3]]
    w = torch.ones(8, 1)
    w[q1] = 3.0  # otherwise diagonal q1–q3
    mesh = flexible_dual_grid_to_mesh(coords, dual, flags, w, grid_size=2)
    assert mesh.faces.tolist() == [[q0, q1, q3], [q3, q1, q2]]
    w = torch.ones(8, 1)  # a tie is "not greater": second split
    mesh = flexible_dual_grid_to_mesh(coords, dual, flags, w, grid_size=2)
    assert mesh.faces.tolist() == [[q0, q1, q3], [q3, q1, q2]]


def test_vertices_are_one_per_voxel_from_the_min_corner():
    coords, dual, flags = _block()
    dual[7] = torch.tensor([-0.5, 1.5, 0.0])
    mesh = flexible_dual_grid_to_mesh(coords, dual, flags, torch.ones(8, 1), grid_size=2)
    assert mesh.vertices.shape == (8, 3) and mesh.faces.shape == (0, 3)
    expected = (coords.float() + dual) / 2 - 0.5
    assert torch.allclose(mesh.vertices, expected)
    assert mesh.vertices[7].tolist() == pytest.approx([-0.25, 0.75, 0.0])


def test_incomplete_quads_are_dropped_and_quads_follow_row_then_axis_order():
    coords, dual, flags = _block()
    flags[7, :] = True  # max corner voxel: every quad would leave the block
    flags[1, 1] = True  # (0,0,1) y edge needs (1,0,1) (1,0,2): missing
    flags[0, 2] = True
    flags[0, 0] = True
    mesh = flexible_dual_grid_to_mesh(coords, dual, flags, torch.ones(8, 1), grid_size=4)
    # voxel 0: axis x first, then axis z
    assert mesh.faces.tolist() == [[0, 1, 2], [2, 1, 3], [0, 2, 4], [4, 2, 6]]


def test_lookups_outside_the_grid_are_absent():
    # voxels beyond grid_size exist in the input, but the official hash treats those lookups as invalid
    coords, dual, flags = _block()
    flags[0, 0] = True
    assert flexible_dual_grid_to_mesh(coords, dual, flags, torch.ones(8, 1), grid_size=2).num_faces == 2
    assert flexible_dual_grid_to_mesh(coords, dual, flags, torch.ones(8, 1), grid_size=1).num_faces == 0


def test_empty_input_and_bad_shapes():
    empty = flexible_dual_grid_to_mesh(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 3),
                                       torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0, 1), grid_size=8)
    assert empty.vertices.shape == (0, 3) and empty.faces.shape == (0, 3)
    coords, dual, flags = _block()
    with pytest.raises(ValueError):
        flexible_dual_grid_to_mesh(coords, dual[:, :2], flags, torch.ones(8, 1), grid_size=2)
    with pytest.raises(ValueError):
        flexible_dual_grid_to_mesh(coords.float(), dual, flags, torch.ones(8, 1), grid_size=2)


def test_mesh_and_voxel_types_validate():
    with pytest.raises(ValueError):
        Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 3]], dtype=torch.int32))
    with pytest.raises(ValueError):
        Mesh(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.int32))
    with pytest.raises(ValueError):
        PbrVoxels(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3, 6), resolution=64)
    v = PbrVoxels(torch.tensor([[1, 0, 3]], dtype=torch.int32), torch.zeros(1, 6), resolution=512)
    assert v.voxel_shape == (1, 6, 2, 1, 4) and v.origin == (-0.5, -0.5, -0.5)
    assert set(v.layout) == {"base_color", "metallic", "roughness", "alpha"}


def test_z_up_to_y_up():
    p = torch.tensor([[1.0, 2.0, 3.0]])
    assert z_up_to_y_up(p).tolist() == [[1.0, 3.0, -2.0]]
