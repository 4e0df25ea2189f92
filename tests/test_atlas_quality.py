"""benchmarks/atlas_quality.py on hand-made atlases whose figures are known."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.atlas_quality import atlas_quality, coverage

SQUARE = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
TWO = torch.tensor([[0, 1, 2], [0, 2, 3]])


def test_unit_square_mapped_onto_the_whole_atlas():
    q = atlas_quality(SQUARE, SQUARE[:, :2], TWO, 16)
    assert q.coverage == 1.0
    assert q.stretch_std_over_mean == pytest.approx(0.0, abs=1e-12)
    assert q.stretch_p95_over_p5 == pytest.approx(1.0)
    assert (q.flipped, q.degenerate_uv, q.islands, q.seam_length) == (0, 0, 1, 0.0)
    assert (q.open_edges, q.nonmanifold_edges) == (4, 0)


@pytest.mark.parametrize("n", [8, 64])
def test_half_square_triangle_covers_the_texels_on_or_below_the_diagonal(n):
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # centres ((i+½)/n, (j+½)/n) with x + y ≤ 1  ⇔  i + j ≤ n − 1: n(n+1)/2 texels
    assert coverage(uvs, torch.tensor([[0, 1, 2]]), n) == pytest.approx((n + 1) / (2 * n))
    # winding does not matter
    assert coverage(uvs, torch.tensor([[0, 2, 1]]), n) == pytest.approx((n + 1) / (2 * n))


def test_cut_along_the_diagonal_is_a_seam_of_its_3d_length():
    # the two triangles get their own UV vertices, placed apart: 2 islands joined along the diagonal 0-2
    pos = torch.cat([SQUARE[[0, 1, 2]], SQUARE[[0, 2, 3]]])
    uvs = torch.cat([pos[:3, :2] * 0.5, pos[3:, :2] * 0.5 + 0.5])
    q = atlas_quality(pos, uvs, torch.tensor([[0, 1, 2], [3, 4, 5]]), 32)
    assert q.islands == 2
    assert q.seam_length == pytest.approx(math.sqrt(2))
    assert q.open_edges == 4 and q.flipped == 0
    assert q.stretch_std_over_mean == pytest.approx(0.0, abs=1e-12)


def test_same_uvs_on_both_sides_is_no_seam():
    # duplicated atlas vertices with equal UVs (no cut) do not make a seam
    pos = torch.cat([SQUARE[[0, 1, 2]], SQUARE[[0, 2, 3]]])
    q = atlas_quality(pos, pos[:, :2], torch.tensor([[0, 1, 2], [3, 4, 5]]), 8)
    assert q.seam_length == 0.0 and q.islands == 2 and q.coverage == 1.0


def test_one_mirrored_triangle_in_an_island_is_flipped_but_a_mirrored_island_is_not():
    uvs = SQUARE[:, :2].clone()
    q = atlas_quality(SQUARE, uvs, TWO, 8)
    assert q.flipped == 0
    mirrored = uvs.clone()
    mirrored[:, 1] = 1 - mirrored[:, 1]  # the whole island mirrored (core flips v): still no flips
    assert atlas_quality(SQUARE, mirrored, TWO, 8).flipped == 0
    # fold vertex 3 over the diagonal: triangle (0, 2, 3) turns over inside the island
    folded = uvs.clone()
    folded[3] = torch.tensor([1.0, 0.2])
    q = atlas_quality(SQUARE, folded, TWO, 8)
    assert q.flipped == 1


def test_stretch_of_a_triangle_with_twice_the_texels():
    # two triangles of equal 3D area; UV areas a and 2a ⇒ densities 2/3 and 4/3 of the mean
    pos = torch.cat([SQUARE[[0, 1, 2]], SQUARE[[0, 2, 3]]])
    uvs = torch.cat([pos[:3, :2] * 0.4, pos[3:, :2] * 0.4 * math.sqrt(2) + torch.tensor([0.42, 0.0])])
    q = atlas_quality(pos, uvs, torch.tensor([[0, 1, 2], [3, 4, 5]]), 32)
    assert q.stretch_std_over_mean == pytest.approx(1 / 3)
    # numpy's linear percentiles of {2/3, 4/3}: p5 = 2/3 + 0.05·2/3, p95 = 2/3 + 0.95·2/3
    assert q.stretch_p95_over_p5 == pytest.approx(1.95 / 1.05)


def test_degenerate_uv_triangle_is_counted():
    uvs = SQUARE[:, :2].clone()
    uvs[3] = uvs[2]  # triangle (0, 2, 3) collapses to a segment in UV
    assert atlas_quality(SQUARE, uvs, TWO, 8).degenerate_uv == 1


def test_chunked_rasteriser_equals_a_brute_force_count(monkeypatch):
    import benchmarks.atlas_quality as aq

    gen = torch.Generator().manual_seed(0)
    uvs = torch.rand(60, 2, generator=gen)
    faces = torch.randint(0, 60, (40, 3), generator=gen)
    n = 24
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    px, py = torch.meshgrid(c, c, indexing="xy")
    hit = torch.zeros(n, n, dtype=torch.bool)
    for f in faces.tolist():
        t = uvs.double()[f]
        e = torch.stack([(t[b, 0] - t[a, 0]) * (py - t[a, 1]) - (t[b, 1] - t[a, 1]) * (px - t[a, 0])
                         for a, b in ((0, 1), (1, 2), (2, 0))])
        hit |= (e >= -1e-9).all(0) | (e <= 1e-9).all(0)
    expected = float(hit.double().mean())
    assert coverage(uvs, faces, n) == pytest.approx(expected)
    monkeypatch.setattr(aq, "_CHUNK_TEXELS", 7)  # many chunks
    assert coverage(uvs, faces, n) == pytest.approx(expected)
