"""ComfyUI's Cancel in the nodes that run long loops or model forwards: the mesh nodes (fill holes, decimate,
UV unwrap), Export GLB (its own unwrap/bake and the bake into a UV Unwrap atlas), Decode Mesh and Encode Image stop
at the next poll inside their work, not after it, and leave no file; degenerate meshes get clear errors."""
from __future__ import annotations

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as M
from nodes import comfy_bridge as bridge
from nodes.types import MeshAsset
from tests.nodes.conftest import comfy_load_image
from trellis2_core import cancel
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.mesh.types import Mesh


@pytest.fixture(autouse=True)
def _every_checkpoint_polls(monkeypatch):
    monkeypatch.setattr(cancel, "DEFAULT_INTERVAL", 0.0)


class Interrupt:
    """Stand-in for ComfyUI's interrupt flag: turns on at the ``after``-th check, counts checks afterwards."""

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.after


@pytest.fixture(scope="module")
def blob():
    from tests.postprocess.conftest import _bench_module

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mesh, voxels = _bench_module().make_blob_surface(48)
    finally:
        torch.set_num_threads(before)
    return (MeshAsset(mesh=mesh, pbr=voxels, resolution=48),)


def _interrupt(monkeypatch, after: int) -> Interrupt:
    flag = Interrupt(after)
    monkeypatch.setattr(bridge, "interrupted", flag)
    return flag


@pytest.mark.parametrize("node, call, after", [
    ("Trellis2FillHoles", lambda n, m: n.fill(m, 0.5), 1),  # (a closed blob: one poll, then nothing to fill)
    ("Trellis2DecimateMesh", lambda n, m: n.decimate(m, 2000, 1e-5), 3),
    ("Trellis2UnwrapUV", lambda n, m: n.unwrap(m, 1024, 2, 60.0), 5),
])
def test_mesh_nodes_stop_inside_their_work(blob, monkeypatch, node, call, after):
    monkeypatch.setattr(bridge, "interrupted", lambda: False)
    call(M[node](), blob)  # without Cancel the node finishes
    flag = _interrupt(monkeypatch, after)
    with pytest.raises(CancelledError, match="cancelled during"):
        call(M[node](), blob)
    assert flag.calls == after  # the first poll that saw Cancel raised


@pytest.mark.parametrize("after", [3, 30])
def test_export_node_stops_inside_the_bake_and_leaves_no_file(blob, output_dir, monkeypatch, after):
    monkeypatch.setattr(bridge, "interrupted", lambda: False)
    (unwrapped,) = M["Trellis2UnwrapUV"]().unwrap(blob, 512, 2, 60.0)
    for items in (blob, unwrapped):  # the export's own unwrap + bake, and the bake into UV Unwrap's atlas
        flag = _interrupt(monkeypatch, after)
        with pytest.raises(CancelledError):
            M["Trellis2ExportGLB"]().export(items, "cancel/mesh", 512, 2000, "OPAQUE", True, "png")
        assert flag.calls == after
    assert not [p for p in output_dir.rglob("*") if p.is_file()]  # no GLB, no temporary file


def test_unwrap_node_handles_degenerate_and_refuses_corrupt_meshes(monkeypatch):
    monkeypatch.setattr(bridge, "interrupted", lambda: False)
    v = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.0, 0.1, 0]])
    f = torch.tensor([[0, 1, 2], [0, 1, 3]], dtype=torch.int32)  # one collinear face, one real one
    (out,) = M["Trellis2UnwrapUV"]().unwrap((MeshAsset(Mesh(v, f), None, 64),), 256, 2, 60.0)
    assert bool(torch.isfinite(out[0].atlas.uvs).all())
    bad = v.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        M["Trellis2UnwrapUV"]().unwrap((MeshAsset(Mesh(bad, f), None, 64),), 256, 2, 60.0)
    with pytest.raises(InputError, match="no faces are left"):  # every piece is smaller than the threshold
        M["Trellis2DecimateMesh"]().decimate((MeshAsset(Mesh(v, f), None, 64),), 1, 0.5)


def test_decode_and_encode_nodes_stop_between_model_blocks(handle, rgba_asset, monkeypatch):
    monkeypatch.setattr(bridge, "interrupted", lambda: False)
    image, mask = comfy_load_image(rgba_asset)
    img, obj = M["Trellis2RemoveBackground"]().remove(image, "auto", 1024, False, "unused", mask=mask)
    cond, _ = M["Trellis2EncodeImage"]().encode(handle, img, "512 only", True, mask=obj)
    sampler = dict(steps=1, guidance_strength=1.0, guidance_rescale=0.0, guidance_interval_start=0.0,
                   guidance_interval_end=1.0, rescale_t=1.0)
    (structure,) = M["Trellis2SampleStructure"]().sample(handle, cond, 7, **sampler)
    (shape,) = M["Trellis2SampleShape"]().sample(handle, cond, structure, "512", 49152, 0, **sampler)
    (material,) = M["Trellis2SampleMaterial"]().sample(handle, cond, shape, 0, **sampler)

    ran = []
    decoder = handle.pipeline.models("tex_slat_decoder")
    counter = decoder.register_forward_hook(lambda *_: ran.append(1))
    try:
        _interrupt(monkeypatch, 3)  # Cancel while the shape decoder runs its blocks
        with pytest.raises(CancelledError, match="mesh decoding"):
            M["Trellis2DecodeMesh"]().decode(handle, shape, material)
        assert ran == []  # the texture decoder never ran
    finally:
        counter.remove()
    _interrupt(monkeypatch, 2)
    with pytest.raises(CancelledError, match="image conditioning"):
        M["Trellis2EncodeImage"]().encode(handle, img, "512 only", True, mask=obj)
