"""UV rasteriser: reference semantics by hand, and the Triton kernel against it (CPU interpreter and GPU)."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

from trellis2_kernels.dispatch import KernelPolicy
from trellis2_kernels.uv_raster import uv_raster, uv_raster_reference

_IMPL = "trellis2_kernels.uv_raster.triton_impl"


def _centres_inside(tri, w, h):
    """Brute force: every texel centre against one triangle (either winding, edges included, zero area: none)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    (ax, ay), (bx, by), (cx, cy) = tri.tolist()
    e0 = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
    e1 = (cx - bx) * (ys - by) - (cy - by) * (xs - bx)
    e2 = (ax - cx) * (ys - cy) - (ay - cy) * (xs - cx)
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    return inside & (area2 != 0)


def _random_case(seed: int, n_faces: int, w: int, h: int):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n_faces, 1, 2, generator=g) * torch.tensor([w, h]) * 1.2 - 0.1 * torch.tensor([w, h])
    size = torch.rand(n_faces, 1, 1, generator=g) ** 3 * 0.5 * max(w, h)  # mostly small, a few spanning tiles
    tri = centre + (torch.rand(n_faces, 3, 2, generator=g) - 0.5) * size
    return tri.reshape(-1, 2).float().contiguous(), torch.arange(3 * n_faces, dtype=torch.int32).view(-1, 3)


def test_reference_matches_brute_force_and_highest_face_wins():
    uv, faces = _random_case(0, 40, 37, 23)
    out = uv_raster_reference(uv, faces, 37, 23)
    expected = torch.full((23, 37), -1, dtype=torch.int32)
    for f in range(faces.shape[0]):
        expected[_centres_inside(uv[faces[f].long()], 37, 23)] = f  # later faces overwrite earlier ones
    assert torch.equal(out, expected)


def test_row_zero_is_v_zero_and_degenerate_faces_cover_nothing():
    uv = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)  # second face is a line
    out = uv_raster_reference(uv, faces, 4, 4)
    assert out[0].tolist() == [0, 0, -1, -1]  # centres (0.5,0.5), (1.5,0.5) inside; (2.5,0.5) just outside
    assert int((out >= 0).sum()) == 2


def test_empty_and_out_of_image():
    uv = torch.tensor([[-5.0, -5.0], [-4.0, -5.0], [-5.0, -4.0]])
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    assert bool((uv_raster(uv, faces, 8, 8) == -1).all())
    assert bool((uv_raster(uv, torch.zeros(0, 3, dtype=torch.int32), 8, 8) == -1).all())
    with pytest.raises(ValueError, match="int32"):
        uv_raster(uv, faces.long(), 8, 8)
    with pytest.raises(ValueError, match="float32"):
        uv_raster(uv.double(), faces, 8, 8)


@pytest.fixture
def triton_impl(monkeypatch):
    """The Triton module imported under TRITON_INTERPRET=1 (decided at decoration time), removed afterwards."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop(_IMPL, None)
    yield importlib.import_module(_IMPL)
    sys.modules.pop(_IMPL, None)


@pytest.mark.parametrize("seed, n_faces, w, h", [(1, 1, 16, 16), (2, 60, 53, 41), (3, 200, 96, 64)])
def test_triton_interpreter_matches_reference(triton_impl, seed, n_faces, w, h):
    uv, faces = _random_case(seed, n_faces, w, h)
    ref = uv_raster_reference(uv, faces, w, h)
    got = triton_impl.uv_raster_triton(uv, faces, w, h)
    # Tolerance: the kernel may evaluate the edge functions with fused multiply-adds, so texel centres within
    # rounding distance of an edge can flip; the interpreter uses plain numpy float32 and matches exactly here.
    bad = (ref != got).nonzero().tolist()
    assert len(bad) <= max(1, int((ref >= 0).sum()) // 1000), (
        f"{len(bad)} texels differ, e.g. (row, col, ref, triton): "
        f"{[(r, c, int(ref[r, c]), int(got[r, c])) for r, c in bad[:5]]}")


def test_forced_triton_on_cpu_goes_through_dispatch(triton_impl, monkeypatch):
    uv, faces = _random_case(4, 30, 32, 32)
    ref = uv_raster(uv, faces, 32, 32, policy=KernelPolicy(mode="reference"))
    got = uv_raster(uv, faces, 32, 32, policy=KernelPolicy(mode="triton"))
    assert int((ref != got).sum()) <= 1


@pytest.mark.gpu
def test_gpu_kernel_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    uv, faces = _random_case(5, 20000, 2048, 2048)
    ref = uv_raster_reference(uv.cuda(), faces.cuda(), 2048, 2048)
    got = uv_raster(uv.cuda(), faces.cuda(), 2048, 2048)
    assert int((ref != got).sum()) <= max(1, int((ref >= 0).sum()) // 10000)
