"""End-to-end GLB export: ExportConfig validation, input validation, report, progress and cancellation."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.errors import CancelledError, InputError
from trellis2_core.mesh.types import Mesh, PbrVoxels
from trellis2_core.postprocess import ExportConfig, export_glb, vertex_normals

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("fast_simplification")

STAGES = ["fill_holes", "clean", "decimate", "unwrap", "bake", "write"]


class Recorder:
    def __init__(self, cancel_after: str | None = None):
        self.steps: list[tuple[str, int, int]] = []
        self.cancel_after = cancel_after

    def step(self, stage: str, i: int, n: int) -> None:
        self.steps.append((stage, i, n))

    def cancelled(self) -> bool:
        return self.cancel_after is not None and self.steps[-1][0] == self.cancel_after


def test_export_writes_a_glb_and_reports(tmp_path, blob48):
    mesh, voxels = blob48  # raw mesher output: unoriented, every voxel a vertex
    progress = Recorder()
    cfg = ExportConfig(target_faces=3000, texture_size=256)
    report = export_glb(mesh, voxels, tmp_path / "out.glb", cfg, progress=progress)
    assert (tmp_path / "out.glb").stat().st_size == report.bytes
    assert 2500 <= report.faces <= 3000 and report.vertices > 0 and report.charts > 1
    assert 0.5 < report.atlas_coverage < 1.0
    assert list(report.timings) == STAGES and all(t >= 0 for t in report.timings.values())
    assert progress.steps == [(s, i + 1, len(STAGES)) for i, s in enumerate(STAGES)]
    scene = trimesh.load(tmp_path / "out.glb")
    (loaded,) = scene.geometry.values()
    assert loaded.faces.shape[0] == report.faces and loaded.visual.uv is not None


def test_decimation_can_be_disabled(tmp_path, blob48):
    mesh, voxels = blob48
    report = export_glb(mesh, voxels, tmp_path / "full.glb", ExportConfig(target_faces=0, texture_size=256))
    assert report.faces == mesh.num_faces  # closed, clean surface: nothing removed


def test_cancellation_stops_between_stages_and_writes_nothing(tmp_path, blob48):
    mesh, voxels = blob48
    with pytest.raises(CancelledError, match="unwrap"):
        export_glb(mesh, voxels, tmp_path / "x.glb", ExportConfig(target_faces=2000, texture_size=256),
                   progress=Recorder(cancel_after="unwrap"))
    assert list(tmp_path.iterdir()) == []


def test_invalid_inputs_fail_before_any_work(tmp_path, blob48):
    _, voxels = blob48
    tri = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]])
    good_faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(InputError, match="empty"):
        export_glb(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32)), voxels, tmp_path / "a.glb")
    nan = tri.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        export_glb(Mesh(nan, good_faces), voxels, tmp_path / "a.glb")
    with pytest.raises(InputError, match="index vertices"):
        export_glb(Mesh.unchecked(tri, torch.tensor([[0, 1, 7]], dtype=torch.int32)), voxels, tmp_path / "a.glb")
    with pytest.raises(InputError, match="Mesh"):
        export_glb((tri, good_faces), voxels, tmp_path / "a.glb")
    with pytest.raises(InputError, match="PbrVoxels"):
        export_glb(Mesh(tri, good_faces), None, tmp_path / "a.glb")
    with pytest.raises(InputError, match="directory"):
        export_glb(Mesh(tri, good_faces), voxels, tmp_path)
    bad = PbrVoxels(voxels.coords, torch.full_like(voxels.attrs, float("inf")), voxels.resolution)
    with pytest.raises(InputError, match="attributes"):
        export_glb(Mesh(tri, good_faces), bad, tmp_path / "a.glb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"texture_size": 128}, "texture_size"),
    ({"texture_size": 9000}, "texture_size"),
    ({"target_faces": -1}, "target_faces"),
    ({"alpha_mode": "opaque"}, "alpha_mode"),
    ({"alpha_cutoff": 1.5}, "alpha_cutoff"),
    ({"texture_format": "jpg"}, "texture_format"),
    ({"fill_holes_perimeter": -0.1}, "fill_holes_perimeter"),
    ({"fill_holes_perimeter": float("nan")}, "fill_holes_perimeter"),
    ({"uv_padding": 0}, "uv_padding"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        ExportConfig(**kwargs)


def test_config_defaults_follow_the_official_demo():
    cfg = ExportConfig()
    assert (cfg.target_faces, cfg.texture_size, cfg.alpha_mode, cfg.fill_holes_perimeter) == (500_000, 2048,
                                                                                              "OPAQUE", 3e-2)


def test_vertex_normals_are_area_weighted_and_unit(icosphere):
    v, f = icosphere(2)
    n = vertex_normals(Mesh(v, f))
    torch.testing.assert_close(n.norm(dim=1), torch.ones(v.shape[0]), atol=1e-5, rtol=0)
    assert float((n * v / v.norm(dim=1, keepdim=True)).sum(1).min()) > 0.99  # sphere: normals are radial
    lone = Mesh(torch.cat((v, torch.zeros(1, 3))), f)  # an unreferenced vertex gets +z
    assert vertex_normals(lone)[-1].tolist() == [0.0, 0.0, 1.0]


def test_remesh_export_is_a_closed_single_sided_shell(tmp_path, blob48):
    import json
    import struct

    mesh, voxels = blob48
    progress = Recorder()
    cfg = ExportConfig(target_faces=6000, texture_size=256, remesh=True)
    assert cfg.material_double_sided is False and ExportConfig().material_double_sided is True
    report = export_glb(mesh, voxels, tmp_path / "remeshed.glb", cfg, progress=progress)
    stages = ["fill_holes", "remesh", "decimate", "unwrap", "bake", "write"]
    assert list(report.timings) == stages and [s for s, _, _ in progress.steps] == stages
    assert report.faces <= 6000
    raw = (tmp_path / "remeshed.glb").read_bytes()
    length = struct.unpack_from("<I", raw, 12)[0]
    gltf = json.loads(raw[20:20 + length])
    assert gltf["materials"][0].get("doubleSided", False) is False
    scene = trimesh.load(tmp_path / "remeshed.glb")
    (loaded,) = scene.geometry.values()
    loaded.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split vertices; weld them back
    assert loaded.is_winding_consistent
    flat = export_glb(mesh, voxels, tmp_path / "flat.glb", ExportConfig(target_faces=6000, texture_size=256))
    # texels are projected back onto the original surface: both exports bake the same colours on average
    a = trimesh.load(tmp_path / "remeshed.glb").geometry
    b = trimesh.load(tmp_path / "flat.glb").geometry
    colour = [next(iter(g.values())).visual.material.baseColorTexture for g in (a, b)]
    means = [torch.tensor(list(c.convert("RGB").resize((1, 1), 4).getpixel((0, 0))), dtype=torch.float32)
             for c in colour]
    assert float((means[0] - means[1]).abs().max()) < 12, (means, flat.faces)


@pytest.mark.parametrize("kwargs, match", [
    ({"remesh_band": 0}, "remesh_band"),
    ({"remesh_project": 1.5}, "remesh_project"),
    ({"remesh": 1}, "remesh must be"),
    ({"double_sided": "yes"}, "double_sided"),
])
def test_remesh_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        ExportConfig(**kwargs)
