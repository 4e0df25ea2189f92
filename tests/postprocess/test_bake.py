"""Texture baking (§9.5): renormalised sparse trilinear sampling, uint8 truncation, raster conventions, seam fill."""
from __future__ import annotations

import itertools

import torch

from trellis2_core.mesh.types import PbrVoxels
from trellis2_core.postprocess import bake_pbr_textures, sample_pbr_voxels, unwrap_uv
from trellis2_core.postprocess.bake import fill_uncovered, rasterize_positions, to_uint8


def _hand_trilinear(coords: dict, res: int, p: torch.Tensor) -> torch.Tensor:
    """The §9.5 step-4 formula written out for one point, with a dict {(i,j,k): value [C]}."""
    q = (p.double() + 0.5) * res
    base = torch.floor(q - 0.5).long()
    acc, wsum = 0.0, 0.0
    for d in itertools.product((0, 1), repeat=3):
        i = tuple((base + torch.tensor(d)).tolist())
        w = float(torch.prod(1 - (q - (torch.tensor(i, dtype=torch.float64) + 0.5)).abs()))
        if i in coords:
            acc = acc + w * coords[i]
            wsum += w
    return acc / max(wsum, 1e-12) if wsum > 0 else torch.zeros(6, dtype=torch.float64)


def _voxels(table: dict, res: int) -> PbrVoxels:
    coords = torch.tensor(list(table.keys()), dtype=torch.int32)
    attrs = torch.stack([v.float() for v in table.values()])
    return PbrVoxels(coords, attrs, res)


def test_trilinear_is_renormalised_over_existing_voxels():
    res = 8
    g = torch.Generator().manual_seed(1)
    # 5 of the 8 corners around the query exist (the other 3 are dropped, not zero-padded)
    table = {c: torch.rand(6, generator=g, dtype=torch.float64)
             for c in [(3, 3, 3), (4, 3, 3), (3, 4, 3), (4, 4, 4), (3, 3, 4), (6, 6, 6)]}
    vox = _voxels(table, res)
    points = torch.tensor([[0.03, 0.01, 0.02], [-0.02, -0.04, 0.07], [0.0, 0.0, 0.0]])
    got = sample_pbr_voxels(vox, points, fallback=False)
    for p, value in zip(points, got):
        torch.testing.assert_close(value.double(), _hand_trilinear(table, res, p), atol=1e-6, rtol=1e-6)


def test_renormalisation_example_by_hand():
    # query at grid position (4.25, 4.5, 4.5): neighbours x ∈ {3, 4} with weights 0.25 / 0.75 along x, y/z split
    # evenly. Only (3,4,4) [value 1] and (4,4,4) [value 3] exist: w = 0.25·0.5·0.5 and 0.75·0.5·0.5, so the
    # renormalised value is 0.25·1 + 0.75·3 = 2.5 (zero padding would have given 0.625).
    res = 8
    table = {(3, 4, 4): torch.full((6,), 1.0, dtype=torch.float64),
             (4, 4, 4): torch.full((6,), 3.0, dtype=torch.float64)}
    p = torch.tensor([[4.25 / res - 0.5, 4.5 / res - 0.5, 4.5 / res - 0.5]])
    got = sample_pbr_voxels(_voxels(table, res), p, fallback=False)
    torch.testing.assert_close(got, torch.full((1, 6), 2.5), atol=1e-6, rtol=0)


def test_no_neighbour_gives_zero_or_the_nearest_voxel():
    res = 16
    table = {(2, 2, 2): torch.arange(6, dtype=torch.float64) / 10, (9, 9, 9): torch.ones(6, dtype=torch.float64)}
    vox = _voxels(table, res)
    p = torch.tensor([[(4.0 + 0.5) / res - 0.5] * 3])  # two voxels away from (2,2,2), none of its 8 neighbours
    assert float(sample_pbr_voxels(vox, p, fallback=False).abs().max()) == 0.0
    torch.testing.assert_close(sample_pbr_voxels(vox, p), table[(2, 2, 2)].float()[None])
    far = torch.tensor([[0.45, -0.45, 0.45]])
    assert float(sample_pbr_voxels(vox, far).abs().max()) == 0.0  # nothing within the fallback radius


def test_uint8_is_clipped_then_truncated():
    v = torch.tensor([-0.2, 0.0, 0.5, 0.999, 1.0, 1.7])
    assert to_uint8(v).tolist() == [0, 0, 127, 254, 255, 255]


def test_raster_rows_are_bottom_up_and_positions_interpolate_linearly():
    # one triangle in the lower-left half of UV space (v small): it must cover low rows
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    pos = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    covered, points = rasterize_positions(uvs, faces, pos, 16)
    assert int(covered[0].sum()) == 15 and not bool(covered[8:].any())  # row 0 is v ≈ 1/32, row 8 is v > 0.5
    rows, cols = covered.nonzero().unbind(1)
    u, v = (cols.float() + 0.5) / 16, (rows.float() + 0.5) / 16
    # position is linear in (u, v): p = (2u, 2v, 6v)
    torch.testing.assert_close(points, torch.stack((2 * u, 2 * v, 6 * v), 1), atol=1e-5, rtol=0)


def test_flat_coloured_shell_bakes_to_that_colour(oriented_blob):
    mesh, voxels = oriented_blob
    # base colour, metallic, roughness, alpha at texel-value midpoints, so float rounding of the renormalised
    # average (Σw·a/Σw) cannot move the truncation across an integer
    colour = (torch.tensor([51, 102, 153, 229, 76, 254]) + 0.5) / 255
    flat = PbrVoxels(voxels.coords, colour.expand(voxels.coords.shape[0], 6).contiguous(), voxels.resolution)
    atlas = unwrap_uv(mesh, 256)
    tex = bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, flat, 256)
    expected = to_uint8(colour)
    assert tex.base_color.shape == (256, 256, 4) and tex.metallic_roughness.shape == (256, 256, 3)
    assert bool((tex.base_color == expected[[0, 1, 2, 5]]).all())  # covered texels and the filled rest alike
    assert bool((tex.metallic_roughness == torch.stack((torch.tensor(0, dtype=torch.uint8), expected[4],
                                                        expected[3]))).all())
    assert 0.5 < tex.coverage < 1.0


def test_uncovered_texels_are_dilated_from_their_neighbours():
    img = torch.zeros(8, 8, 3, dtype=torch.uint8)
    covered = torch.zeros(8, 8, dtype=torch.bool)
    img[2:4, 2:4] = torch.tensor([200, 10, 10], dtype=torch.uint8)
    img[2:4, 5:7] = torch.tensor([10, 10, 200], dtype=torch.uint8)
    covered[2:4, 2:4] = True
    covered[2:4, 5:7] = True
    out = fill_uncovered(img, covered)
    assert torch.equal(out[covered], img[covered])  # covered texels untouched
    assert out[1, 2].tolist() == [200, 10, 10] and out[2, 7].tolist() == [10, 10, 200]  # next to one chart
    assert out[3, 4].tolist() == [105, 10, 105]  # between the two: the mean of its covered neighbours
    assert int(out.float().sum(-1).eq(0).sum()) == 0  # no black texel left anywhere


def _plane(z: float, half: float = 0.25):
    """Two triangles spanning [-half, half]² at height ``z`` with UVs over the whole [0, 1]² atlas."""
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return v, uv, f


def test_texels_are_projected_onto_the_original_surface_before_sampling():
    """§9.5 step 3: an offset surface (the remesher's shell) must bake the colours of the original surface.

    Voxel layer k (red) holds the original plane at its voxel centres; layer k + 1 (blue) lies one voxel above. A
    copy of the plane one voxel higher samples blue by itself, red after projection onto the original.
    """
    from trellis2_core.mesh.types import Mesh

    res, k = 32, 16
    z0 = (k + 0.5) / res - 0.5
    ij = torch.stack(torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij"), -1).reshape(-1, 2)
    red = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 1.0])
    blue = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.5, 1.0])
    coords = torch.cat((torch.cat((ij, torch.full((ij.shape[0], 1), k)), 1),
                        torch.cat((ij, torch.full((ij.shape[0], 1), k + 1)), 1))).to(torch.int32)
    attrs = torch.cat((red.expand(ij.shape[0], 6), blue.expand(ij.shape[0], 6)))
    voxels = PbrVoxels(coords, attrs.contiguous(), res)
    original_v, uv, f = _plane(z0)
    original = Mesh(original_v, f)
    offset_v, _, _ = _plane(z0 + 1.0 / res)

    plain = bake_pbr_textures(uv, f, offset_v, voxels, 64)
    projected = bake_pbr_textures(uv, f, offset_v, voxels, 64, surface=original)
    assert float(plain.base_color[..., 2].float().mean()) > 250  # without projection: the wrong (blue) layer
    assert float(projected.base_color[..., 0].float().min()) >= 254  # projected: red everywhere
    assert float(projected.base_color[..., 2].float().max()) <= 1
    on_surface = bake_pbr_textures(uv, f, original_v, voxels, 64)
    assert torch.equal(projected.base_color, on_surface.base_color)  # same texels as baking the original itself
