"""Decimation to a face count (§9.3 role, via fast-simplification)."""
from __future__ import annotations

import sys

import pytest
import torch

from trellis2_core.errors import BackendError
from trellis2_core.mesh.types import Mesh
from trellis2_core.postprocess import decimate_mesh

pytest.importorskip("fast_simplification")


def _volume(mesh: Mesh) -> float:
    p = mesh.vertices.double()[mesh.faces.long()]
    return float((p[:, 0] * torch.linalg.cross(p[:, 1], p[:, 2], dim=1)).sum() / 6)


def test_reaches_the_target_and_keeps_the_shape(icosphere):
    v, f = icosphere(5)  # 20 480 faces
    mesh = Mesh(v, f)
    out = decimate_mesh(mesh, 2000)
    assert 1000 <= out.num_faces <= 2000
    assert out.vertices.dtype == torch.float32 and out.faces.dtype == torch.int32
    assert int(out.faces.max()) < out.num_vertices
    assert abs(_volume(out) / _volume(mesh) - 1) < 0.03
    # vertices stay on the sphere (radius 0.4) to within a small fraction
    r = out.vertices.norm(dim=1)
    assert float((r - 0.4).abs().max()) < 0.02


def test_dual_grid_surface(blob48):
    mesh, _ = blob48
    out = decimate_mesh(mesh, 3000)
    assert 2500 <= out.num_faces <= 3000
    assert bool(torch.isfinite(out.vertices).all())


def test_zero_or_large_target_is_a_no_op(icosphere):
    mesh = Mesh(*icosphere(2))
    assert decimate_mesh(mesh, 0) is mesh
    assert decimate_mesh(mesh, mesh.num_faces) is mesh


def test_missing_package_names_the_install_command(icosphere, monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # makes `import fast_simplification` fail
    with pytest.raises(BackendError, match="pip install"):
        decimate_mesh(Mesh(*icosphere(2)), 10)
