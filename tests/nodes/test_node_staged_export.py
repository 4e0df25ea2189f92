"""The staged path (Fill Holes → Decimate → UV Unwrap → Export GLB nodes) bakes the same texels as the one-node
export of the same mesh: both project every texel onto the hole-filled original surface (§9.5 step 3)."""
from __future__ import annotations

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as M
from nodes.types import MeshAsset
from tests.postprocess.conftest import _bench_module, one_thread
from trellis2_core.errors import InputError
from trellis2_core.postprocess import fill_holes, simplify_mesh, texture_mesh, unwrap_uv

SIZE, FACES = 256, 3000
EXPORT = dict(texture_size=SIZE, target_faces=FACES, alpha_mode="OPAQUE", double_sided=True, texture_format="png")


@pytest.fixture(scope="module")
def item():
    with one_thread():
        mesh, pbr = _bench_module().make_blob_surface(48)
    return (MeshAsset(mesh=mesh, pbr=pbr, resolution=pbr.resolution),)


def test_staged_and_one_node_exports_bake_the_same_texels(item, output_dir):
    with one_thread():
        one = M["Trellis2ExportGLB"]().export(item, "one/mesh", **EXPORT)["result"][1]
        (filled,) = M["Trellis2FillHoles"]().fill(item, 0.03)
        (decimated,) = M["Trellis2DecimateMesh"]().decimate(filled, FACES, 1e-5)
        assert decimated[0].surface is filled[0].mesh  # the original is kept for the projection
        (unwrapped,) = M["Trellis2UnwrapUV"]().unwrap(decimated, SIZE, 2, 60.0)
        staged = M["Trellis2ExportGLB"]().export(unwrapped, "staged/mesh", **EXPORT)["result"][1]
    assert torch.equal(one.faces, staged.faces) and torch.equal(one.uvs, staged.uvs)
    # tolerance: identical geometry, atlas and projection target, so the texels are expected bit-equal; allow one
    # 8-bit step for a different float summation order of the closest-point search
    assert (one.texture - staged.texture).abs().max() <= 1 / 255 + 1e-6
    assert (one.metallic_roughness - staged.metallic_roughness).abs().max() <= 1 / 255 + 1e-6


def test_the_projection_changes_texels(item):
    """Without the original surface (what the staged path did before) the bake differs: the test above can fail."""
    mesh, pbr = item[0].mesh, item[0].pbr
    with one_thread():
        original = fill_holes(mesh)
        work, moved = simplify_mesh(original, FACES)
        atlas = unwrap_uv(work, SIZE)
        projected = texture_mesh(work, atlas, pbr, SIZE, surface=original)
        flat = texture_mesh(work, atlas, pbr, SIZE)
    assert moved
    diff = (projected.base_color.float() - flat.base_color.float()).abs()
    assert float(diff.max()) > 4


def test_atlas_packed_for_another_size_is_refused(item, output_dir):
    with one_thread():
        (unwrapped,) = M["Trellis2UnwrapUV"]().unwrap(item, 512, 2, 60.0)
        with pytest.raises(InputError, match="packed for 512 px.*same texture_size"):
            M["Trellis2ExportGLB"]().export(unwrapped, "x/mesh", **EXPORT)
