"""Progress, cancellation and VRAM-preset residency plumbing of the nodes (no ComfyUI, no models)."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from nodes import comfy_bridge as bridge
from nodes.runtime import PipelineHandle, StageProgress, comfy_errors, resolve_preset
from trellis2_core.errors import CancelledError, InputError


class _Bar:
    def __init__(self, total):
        self.total, self.values = total, []

    def update_absolute(self, value, total=None, preview=None):
        self.values.append((value, total))


@pytest.fixture()
def bars(monkeypatch):
    made = []

    def factory(total):
        made.append(_Bar(total))
        return made[-1]

    monkeypatch.setattr(bridge, "progress_bar", factory)
    return made


def test_progress_spans_stages(bars):
    p = StageProgress(2 + 4 + 1 + 6)
    for i in (1, 2):
        p.step("shape_lr", i, 2)
    for i in (1, 2, 3, 4):
        p.step("shape_hr", i, 4)
    p.advance()
    g = p.grouped("export")
    for i, name in enumerate(["fill_holes", "clean", "decimate", "unwrap", "bake", "write"], 1):
        g.step(name, i, 6)
    values = [v for v, _ in bars[0].values]
    assert values == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert values == sorted(values) and values[-1] == bars[0].total


def test_grouped_stage_names_count_once(bars):
    p = StageProgress(1 + 6)
    p.step("load", 0, 1)
    p.step("load", 1, 1)
    for i in range(1, 7):
        p.step(f"export:s{i}", i, 6)  # image_to_glb names its export steps export:<step>
    assert [v for v, _ in bars[0].values][-1] == 7


def test_cancellation_outside_comfyui_reraises():
    assert bridge.interrupted() is False
    with pytest.raises(CancelledError):
        with comfy_errors():
            raise CancelledError("stop")


def test_out_of_memory_names_the_setting_to_lower():
    from trellis2_core.errors import OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match="vram_preset"):
        with comfy_errors():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="other"):
        with comfy_errors():
            raise RuntimeError("other failure")


def test_auto_preset(monkeypatch):
    from trellis2_core.loading.residency import resolve_preset as library_policy

    for gib in (8, 12, 24, 40):  # one policy: the library's thresholds, fed with what ComfyUI can free
        monkeypatch.setattr(bridge, "total_memory", lambda device, gib=gib: gib << 30)
        assert resolve_preset("auto", torch.device("cuda")) == library_policy("auto", "cuda", free_bytes=gib << 30)
    assert resolve_preset("auto", torch.device("cpu")) == "high"
    assert resolve_preset("low", torch.device("cpu")) == "low"
    with pytest.raises(InputError, match="vram_preset must be one of"):
        resolve_preset("huge", torch.device("cpu"))


class _Store:
    def __init__(self):
        self.loaded = {"sparse_structure_flow_model", "sparse_structure_decoder", "shape_slat_decoder"}
        self.released = []

    def release(self, key):
        self.released.append(key)
        was = key in self.loaded
        self.loaded.discard(key)
        return was


class _Pipe:
    def __init__(self):
        self.models = _Store()
        self.config = None


@pytest.mark.parametrize("preset", ["high", "medium", "low"])
def test_stages_keep_models_loaded_under_every_preset(preset):
    """The library's residency moves weights between host and GPU; the nodes never drop a loaded model (re-runs
    do not read checkpoints again), also when a stage fails."""
    h = PipelineHandle(pipeline=_Pipe(), source="x", root=None, device=torch.device("cpu"), vram_preset=preset)
    with h.models_for(("sparse_structure_flow_model", "sparse_structure_decoder")):
        pass
    with pytest.raises(RuntimeError):
        with h.models_for(("sparse_structure_decoder",)):
            raise RuntimeError("boom")
    assert h.pipeline.models.released == []


def test_load_node_applies_preset_and_speed_to_the_library(tiny_pipeline):
    from nodes.load import Trellis2LoadModel
    from trellis2_core.config import FastPathConfig

    (h,) = Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "auto", "low", "cpu",
                                    custom_source=str(tiny_pipeline), speed="eager")
    assert h.vram_preset == "low" and h.pipeline.models.vram_preset == "low"
    assert h.fast == FastPathConfig()
    (h,) = Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "auto", "high", "cpu",
                                    custom_source=str(tiny_pipeline))
    assert h.fast == FastPathConfig.fast() and h.pipeline.models.vram_preset == "high"
    (h,) = Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "auto", "high", "cpu",
                                    custom_source=str(tiny_pipeline), speed="fast_no_compile")
    assert h.fast == FastPathConfig.fast(compile_blocks=False) and h.fast.batch_cfg and not h.fast.compile_blocks
    with pytest.raises(InputError,
                       match="Load TRELLIS.2 Model: widget 'speed' must be one of fast, fast_no_compile, eager"):
        Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "auto", "high", "cpu",
                                 custom_source=str(tiny_pipeline), speed="warp")
    (h,) = Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "flash", "high", "cpu",
                                    custom_source=str(tiny_pipeline))
    assert h.fast == dataclasses.replace(FastPathConfig.fast(), attention_kernel="flash")


def test_load_node_refuses_fa4_when_missing_before_loading(monkeypatch, tmp_path):
    from nodes.load import Trellis2LoadModel
    from trellis2_core.errors import BackendError

    monkeypatch.setattr(importlib.import_module("trellis2_core.sparse.attention"), "fa4_available", lambda: False)
    with pytest.raises(BackendError, match=r"install\.py --fa4"):  # the missing source is never looked at
        Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "fa4", "high", "cpu",
                                 custom_source=str(tmp_path / "no-such-pipeline"))


def test_extra_models_cached_unless_low():
    calls = []
    for preset, n in (("high", 1), ("low", 2)):
        calls.clear()
        h = PipelineHandle(pipeline=_Pipe(), source="x", root=None, device=torch.device("cpu"), vram_preset=preset)
        h.extra_model("m", lambda: calls.append(1) or object())
        h.extra_model("m", lambda: calls.append(1) or object())
        assert len(calls) == n


def test_core_mesh_fallback():
    from trellis2_core.mesh.types import Mesh
    from trellis2_core.postprocess.comfy_layout import core_mesh_tensors

    m = bridge.core_mesh(core_mesh_tensors([Mesh(torch.eye(3), torch.tensor([[0, 1, 2]], dtype=torch.int32))]))
    assert m.vertices.shape == (1, 3, 3) and m.faces.shape == (1, 1, 3) and m.vertex_counts.tolist() == [3]
