"""The ComfyUI side of ``nodes/comfy_bridge.py``, against small stand-ins of ComfyUI's modules.

The real-ComfyUI test (``tests/comfyui``) covers the real thing; this checks the calls the bridge makes: the
ProgressBar, the interrupt flag and exception, free_memory/soft_empty_cache, folder registration, MESH.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from nodes import comfy_bridge as bridge
from nodes.runtime import PipelineHandle, StageProgress, comfy_errors
from trellis2_core.errors import CancelledError


class _Interrupt(Exception):
    pass


@pytest.fixture()
def fake_comfy(tmp_path, monkeypatch):
    log = {"progress": [], "free": [], "empty": 0}
    state = {"interrupt": False}

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = _Interrupt
    mm.processing_interrupted = lambda: state["interrupt"]

    def throw():
        if state["interrupt"]:
            state["interrupt"] = False
            raise _Interrupt()
    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.get_total_memory = lambda dev: 12 << 30
    mm.free_memory = lambda n, dev: log["free"].append((n, str(dev)))
    mm.soft_empty_cache = lambda: log.__setitem__("empty", log["empty"] + 1)

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            log["progress"].append((value, total))
    utils.ProgressBar = ProgressBar

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}

    def add_model_folder_path(name, path, is_default=False):
        fp.folder_names_and_paths.setdefault(name, ([], set()))[0].insert(0 if is_default else 10**6, path)
    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    fp.get_output_directory = lambda: str(tmp_path / "output")

    hunyuan = types.ModuleType("comfy_extras.nodes_hunyuan3d")

    class MESH:
        def __init__(self, vertices, faces):
            self.vertices, self.faces = vertices, faces
    hunyuan.MESH = MESH

    comfy = types.ModuleType("comfy")
    extras = types.ModuleType("comfy_extras")
    for name, mod in {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils, "folder_paths": fp,
                      "comfy_extras": extras, "comfy_extras.nodes_hunyuan3d": hunyuan}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(log=log, state=state, fp=fp, MESH=MESH, tmp=tmp_path)


def test_progress_goes_to_comfyui(fake_comfy):
    p = StageProgress(3)
    p.hooks().progress("sparse_structure", 1, 3)
    p.step("sparse_structure", 3, 3)
    assert fake_comfy.log["progress"] == [(1, 3), (3, 3)]


def test_cancel_becomes_comfyui_interrupt(fake_comfy):
    assert StageProgress(1).hooks().should_cancel() is False
    fake_comfy.state["interrupt"] = True
    assert bridge.interrupted() and StageProgress(1).cancelled()
    with pytest.raises(_Interrupt):
        with comfy_errors():
            raise CancelledError("stopped by the sampler")
    assert fake_comfy.state["interrupt"] is False  # ComfyUI's flag is consumed, as its own nodes do


def test_folders_and_output(fake_comfy):
    bridge.on_pack_load()
    bridge.on_pack_load()  # idempotent
    assert bridge.trellis2_dirs() == [fake_comfy.tmp / "models" / "trellis2"]
    assert bridge.models_dir() == fake_comfy.tmp / "models"
    assert bridge.output_dir() == fake_comfy.tmp / "output"
    (fake_comfy.tmp / "models" / "trellis2" / "mine").mkdir(parents=True)
    (fake_comfy.tmp / "models" / "trellis2" / "mine" / "pipeline.json").write_text("{}")
    from nodes.load import list_sources
    assert list_sources() == ["microsoft/TRELLIS.2-4B", "mine", "demo"]


def test_demo_source_is_the_random_demo_pipeline_unless_a_folder_is_named_so(fake_comfy, monkeypatch):
    from nodes.load import _resolve
    from trellis2_core.loading import random_pipeline

    made = fake_comfy.tmp / "cache" / "demo-pipeline"
    monkeypatch.setattr(random_pipeline, "demo_pipeline", lambda: made)
    models = fake_comfy.tmp / "models"
    assert _resolve("demo", models) == made
    own = models / "trellis2" / "demo"
    own.mkdir(parents=True)
    (own / "pipeline.json").write_text("{}")
    assert _resolve("demo", models) == own  # the user's own folder of that name wins


def test_memory_calls_follow_the_preset(fake_comfy):
    class Store:
        def release(self, key):
            return True

    pipe = types.SimpleNamespace(models=Store(), config=types.SimpleNamespace(root=fake_comfy.tmp, model_ref=str))
    for preset, frees in (("high", 0), ("low", 1)):
        fake_comfy.log["free"].clear()
        h = PipelineHandle(pipeline=pipe, source="x", root=fake_comfy.tmp, device=torch.device("cuda"),
                           vram_preset=preset)
        with h.models_for(("sparse_structure_flow_model",)):
            pass
        assert len(fake_comfy.log["free"]) == frees
    assert fake_comfy.log["empty"] == 1  # only 'low' handed the allocator cache back after its stage


def test_core_mesh_uses_comfyui_class(fake_comfy, monkeypatch):
    from trellis2_core.mesh.types import Mesh
    from trellis2_core.postprocess.comfy_layout import core_mesh_tensors

    fields = core_mesh_tensors([Mesh(torch.eye(3), torch.tensor([[0, 1, 2]], dtype=torch.int32))])
    m = bridge.core_mesh(fields)  # an old core's MESH(vertices, faces): geometry only
    assert isinstance(m, fake_comfy.MESH) and m.vertices.shape == (1, 3, 3)

    latest = types.ModuleType("comfy_api.latest")

    class FullMesh:  # today's core MESH: every field by keyword
        def __init__(self, vertices, faces, uvs=None, vertex_colors=None, texture=None, metallic_roughness=None,
                     vertex_counts=None, face_counts=None, normals=None):
            self.vertices, self.faces, self.normals, self.vertex_counts = vertices, faces, normals, vertex_counts

    latest.Types = types.SimpleNamespace(MESH=FullMesh)
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    m = bridge.core_mesh(fields)
    assert isinstance(m, FullMesh) and m.vertex_counts.tolist() == [3] and m.normals.shape == (1, 3, 3)
