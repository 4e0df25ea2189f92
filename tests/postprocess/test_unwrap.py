"""Fast UV unwrapping: no flipped UV triangles, coverage, UVs in [0,1], seams duplicated, charts kept apart."""
from __future__ import annotations

import math

import pytest
import torch

from trellis2_core._kernels import load
from trellis2_core.mesh.types import Mesh
from trellis2_core.postprocess import count_flipped, unwrap_uv

load()
from trellis2_kernels.uv_raster import uv_raster  # noqa: E402
from trellis2_kernels.uv_raster.reference import inside_triangle, triangle_boxes  # noqa: E402

SIZE = 1024


@pytest.fixture(scope="module")
def atlas(oriented_blob):
    mesh, _ = oriented_blob
    return mesh, unwrap_uv(mesh, SIZE, padding=2)


def _claims(uvs, faces, size):
    """Every (texel, face) pair whose texel centre lies in the face: ``(texel [K], face [K])``."""
    tri = (uvs * size)[faces.long()]
    x0, x1, y0, y1 = triangle_boxes(tri, size, size)
    bw, bh = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    n = bw * bh
    rep = torch.repeat_interleave(torch.arange(tri.shape[0]), n)
    local = torch.arange(rep.numel()) - (torch.cumsum(n, 0) - n)[rep]
    cx, cy = x0[rep] + local % bw[rep], y0[rep] + local // bw[rep]
    hit = inside_triangle(tri[rep], cx.float() + 0.5, cy.float() + 0.5)
    return (cy * size + cx)[hit], rep[hit]


def test_no_flipped_triangles_and_uvs_in_unit_square(atlas):
    mesh, a = atlas
    assert count_flipped(a.uvs, a.faces) == 0
    assert float(a.uvs.min()) >= 0.0 and float(a.uvs.max()) <= 1.0
    assert a.uvs.dtype == torch.float32 and a.faces.dtype == torch.int32


def test_coverage(atlas):
    _, a = atlas
    covered = float((uv_raster((a.uvs * SIZE).contiguous(), a.faces, SIZE, SIZE) >= 0).float().mean())
    assert covered >= 0.55, covered  # tiny mesh, coarse pack grid; the 200 k-face benchmark reaches ~0.65
    assert abs(covered - a.utilization) < 0.02


def test_faces_keep_order_and_geometry_and_seams_are_duplicated(atlas):
    mesh, a = atlas
    assert a.faces.shape == mesh.faces.shape and a.chart.shape[0] == mesh.num_faces
    torch.testing.assert_close(a.vertices[a.faces.long()], mesh.vertices[mesh.faces.long()], atol=0, rtol=0)
    assert torch.equal(a.vmap[a.faces.long()], mesh.faces.long())
    # one UV vertex per (source vertex, chart) pair, no more, no less
    corner_chart = a.chart[:, None].expand(-1, 3).reshape(-1)
    pairs = torch.unique(mesh.faces.long().reshape(-1) * a.num_charts + corner_chart)
    assert a.uvs.shape[0] == pairs.numel() == a.vmap.numel()
    # each UV vertex belongs to exactly one chart
    uv_chart = torch.full((a.uvs.shape[0],), -1, dtype=torch.int64)
    uv_chart[a.faces.long().reshape(-1)] = corner_chart
    assert bool((uv_chart[a.faces.long()] == a.chart[:, None]).all())
    # seam vertices are really duplicated (a closed surface cut into several charts)
    assert a.num_charts > 1 and a.uvs.shape[0] > mesh.faces.unique().numel()


def test_charts_do_not_overlap_and_keep_their_padding(atlas):
    _, a = atlas
    texel, face = _claims(a.uvs, a.faces, SIZE)
    chart = a.chart[face]
    key = torch.unique(texel * a.num_charts + chart)
    per_texel = torch.bincount(key // a.num_charts, minlength=SIZE * SIZE)
    assert int((per_texel > 1).sum()) == 0  # no texel claimed by two charts
    owner = torch.full((SIZE * SIZE,), -1, dtype=torch.int64)
    owner[key // a.num_charts] = key % a.num_charts
    img = owner.view(SIZE, SIZE)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # padding 2 texels: 8-neighbours never differ in chart
        a_ = img[max(dy, 0):SIZE, max(dx, 0):SIZE + min(dx, 0)]
        b_ = img[: SIZE - dy, max(-dx, 0):SIZE - max(dx, 0)]
        clash = (a_ >= 0) & (b_ >= 0) & (a_ != b_)
        assert int(clash.sum()) == 0


def _ramp(turns: float = 2.0, n_around: int = 96, n_across: int = 4) -> Mesh:
    """A flat spiral ramp (two full turns, slight rise): every normal is within a few degrees of +z, yet the
    projection along z wraps over itself — one cone-bounded chart that must be split."""
    k = int(n_around * turns)
    t = torch.linspace(0, 2 * math.pi * turns, k + 1)
    r = torch.linspace(0.15, 0.3, n_across + 1)
    tt, rr = torch.meshgrid(t, r, indexing="ij")
    pos = torch.stack((rr * torch.cos(tt), rr * torch.sin(tt), 0.01 * tt), -1).reshape(-1, 3)
    idx = torch.arange((k + 1) * (n_across + 1)).view(k + 1, n_across + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = torch.cat((torch.stack((a, b, c), -1).reshape(-1, 3), torch.stack((a, c, d), -1).reshape(-1, 3)))
    return Mesh(pos.float(), faces.int())


def test_self_overlapping_chart_is_split():
    mesh = _ramp()
    a = unwrap_uv(mesh, 512, padding=2)
    assert count_flipped(a.uvs, a.faces) == 0
    assert a.num_charts >= 2
    texel, face = _claims(a.uvs, a.faces, 512)
    _, counts = torch.unique(texel, return_counts=True)
    assert int((counts > 1).sum()) <= 4  # only texel centres lying exactly on shared edges


def test_single_triangle_and_errors():
    tri = Mesh(torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]), torch.tensor([[0, 1, 2]], dtype=torch.int32))
    a = unwrap_uv(tri, 256)
    assert a.num_charts == 1 and count_flipped(a.uvs, a.faces) == 0
    with pytest.raises(ValueError, match="no faces"):
        unwrap_uv(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32)))
    with pytest.raises(ValueError, match="texture_size"):
        unwrap_uv(tri, 8)


def test_count_flipped_by_hand():
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert count_flipped(uvs, torch.tensor([[0, 1, 2]])) == 0
    assert count_flipped(uvs, torch.tensor([[0, 2, 1]])) == 1
    assert count_flipped(uvs, torch.tensor([[0, 0, 1]])) == 1  # degenerate counts as flipped
