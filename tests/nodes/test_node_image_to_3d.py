"""Image to 3D with an image batch: one GLB per image, one progress bar that ends full."""
from __future__ import annotations

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as M
from nodes import comfy_bridge as bridge

from tests.nodes.conftest import comfy_load_image


@pytest.fixture(scope="module")
def demo_handle():
    """The demo pipeline (tiny random weights, a few seconds per image on a CPU) through the Load node."""
    from nodes.load import DEMO_SOURCE, Trellis2LoadModel

    (h,) = Trellis2LoadModel().load(DEMO_SOURCE, "float32", "auto", "high", "cpu")
    return h


def test_an_image_batch_makes_one_glb_per_image_with_one_progress_bar(demo_handle, rgba_asset, output_dir,
                                                                       monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.values = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.values.append(value)

    monkeypatch.setattr(bridge, "progress_bar", Bar)
    image, mask = comfy_load_image(rgba_asset)
    flipped = torch.flip(image, dims=[2])
    images, masks = torch.cat([image, flipped]), torch.cat([mask, torch.flip(mask, dims=[2])])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is ~2x faster here
    try:
        out = M["Trellis2ImageTo3D"]().generate(demo_handle, images, 42, "512", 1, "batch/obj", 256, 2000, "OPAQUE",
                                                True, "png", mask=masks)
    finally:
        torch.set_num_threads(threads)
    entries = out["ui"]["trellis2_glb"]
    assert [e["filename"] for e in entries] == ["obj_00001_.glb", "obj_00002_.glb"]
    paths = [output_dir / e["subfolder"] / e["filename"] for e in entries]
    assert all(p.is_file() and p.read_bytes()[:4] == b"glTF" for p in paths)
    assert paths[0].read_bytes() != paths[1].read_bytes()  # two different images
    glb_path, items, core_mesh, model_3d = out["result"]
    assert glb_path == "batch/obj_00001_.glb" and len(items) == 2
    assert len(core_mesh.vertex_counts) == 2 and model_3d is not None  # one core MESH item per image, FILE_3D
    assert len(bars) == 1  # one bar for the whole batch
    bar = bars[0]
    assert bar.values == sorted(bar.values) and bar.values[-1] == bar.total  # monotone, ends full
    assert bar.total // 2 in bar.values  # the first image ends exactly half-way
