"""The Load node lists ComfyUI core's own TRELLIS.2 files (``comfy:<bundle>``) found in models/diffusion_models,
vae and clip_vision, and the staged nodes run on them (tiny golden weights written in core's layout)."""
from __future__ import annotations

import pytest

from tests.nodes.conftest import comfy_load_image
from tests.pipeline.test_pipeline_comfy_source import NAME, golden_core_dir
from trellis2_core.errors import WeightsError


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return golden_core_dir(tmp_path_factory.mktemp("comfy") / "models")


def test_load_node_lists_and_loads_core_files(models_dir, monkeypatch, rgba_asset):
    from nodes.condition import Trellis2EncodeImage
    from nodes.load import Trellis2LoadModel
    from nodes.sample import Trellis2SampleShape, Trellis2SampleStructure

    monkeypatch.setenv("TRELLIS2_MODELS_DIR", str(models_dir))
    sources = Trellis2LoadModel.INPUT_TYPES()["required"]["source"][0]
    assert NAME in sources and sources[-1] == "demo"
    (handle,) = Trellis2LoadModel().load(NAME, "float32", "auto", "high", "cpu")
    assert handle.pipeline.comfy_files.name == NAME
    assert handle._estimate_bytes(["sparse_structure_flow_model"]) > 0
    image, mask = comfy_load_image(rgba_asset)
    cond, _ = Trellis2EncodeImage().encode(handle, image, "512 and 1024", True, mask=mask)
    params = dict(steps=1, guidance_strength=7.5, guidance_rescale=0.7, guidance_interval_start=0.6,
                  guidance_interval_end=1.0, rescale_t=5.0)
    (structure,) = Trellis2SampleStructure().sample(handle, cond, 42, **params)
    assert structure.structure.coords.shape[0] > 0
    with pytest.raises(WeightsError, match="'512'.*ComfyUI core"):
        Trellis2SampleShape().sample(handle, cond, structure, "512", 49152, 0, **params)
