"""Widget defaults are the library's: sampler widgets = the official pipeline.json (the tiny golden pipeline's file
has the official sampler blocks), export widgets = ExportConfig's defaults, one list of types / modes / formats."""
from __future__ import annotations

import json

from nodes import NODE_CLASS_MAPPINGS as M
from trellis2_core.params import ALPHA_MODES, PIPELINE_TYPES, TEXTURE_FORMATS
from trellis2_core.postprocess import ExportConfig

NODES = {"sparse_structure": "Trellis2SampleStructure", "shape_slat": "Trellis2SampleShape",
         "tex_slat": "Trellis2SampleMaterial"}


def test_sampler_widget_defaults_equal_pipeline_json(tiny_pipeline):
    args = json.loads((tiny_pipeline / "pipeline.json").read_text())["args"]
    for stage, node in NODES.items():
        params = args[f"{stage}_sampler"]["params"]
        widgets = {k: v[1]["default"] for k, v in M[node].INPUT_TYPES()["required"].items()
                   if isinstance(v[1], dict) and "default" in v[1]}
        lo, hi = params["guidance_interval"]
        assert (widgets["steps"], widgets["guidance_strength"], widgets["guidance_rescale"],
                widgets["guidance_interval_start"], widgets["guidance_interval_end"], widgets["rescale_t"]) == (
            params["steps"], params["guidance_strength"], params["guidance_rescale"], lo, hi, params["rescale_t"]), node


def test_export_widgets_use_the_library_defaults_and_lists():
    cfg = ExportConfig()
    for node in ("Trellis2ExportGLB", "Trellis2ImageTo3D"):
        req = M[node].INPUT_TYPES()["required"]
        assert req["texture_size"][1]["default"] == cfg.texture_size
        assert req["target_faces"][1]["default"] == cfg.target_faces
        assert tuple(req["alpha_mode"][0]) == ALPHA_MODES and req["alpha_mode"][1]["default"] == cfg.alpha_mode
        assert tuple(req["texture_format"][0]) == TEXTURE_FORMATS
    for node in ("Trellis2SampleShape", "Trellis2ImageTo3D"):
        assert tuple(M[node].INPUT_TYPES()["required"]["resolution"][0]) == PIPELINE_TYPES
