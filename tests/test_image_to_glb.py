"""End to end on CPU: tiny golden pipeline, image → GLB (spec §1, §2, §8.2, §9), acceptance checks and bad inputs.

Each GLB must have 0 errors in the Khronos glTF validator and reload in trimesh with UVs, a PBR material and
textures of the requested size. CI runs two images (one with alpha, one composited on white through the tiny
matting model) with fewer sampler steps; the slow test runs every asset image both ways with the defaults.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tools.glb_checks import (
    Stopwatch, asset_images, assert_valid_glb, loaded_tiny_pipeline,
)
from tests.tools.matting_fixture import build_tiny_matting
from trellis2_core import image_to_glb
from trellis2_core.errors import CancelledError, InputError, OutOfMemoryError
from trellis2_core.loading import ModelStore, Normalization
from trellis2_core.pipeline.pipeline import Pipeline
from trellis2_core.postprocess import ExportConfig
from trellis2_core.preprocess.background import prepare_image

TIME_LIMIT_S = 60.0  # acceptance: each image in under 60 s on CPU


class Recorder:
    """Progress sink that records (stage, i, n) and can cancel after a given event."""

    def __init__(self, cancel_at: str | None = None) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.cancel_at = cancel_at

    def step(self, stage: str, i: int, n: int) -> None:
        self.events.append((stage, i, n))

    def cancelled(self) -> bool:
        return self.cancel_at is not None and any(s == self.cancel_at for s, _, _ in self.events)

    def stages(self) -> list[str]:
        out: list[str] = []
        for stage, _, _ in self.events:
            if not out or out[-1] != stage:
                out.append(stage)
        return out


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return loaded_tiny_pipeline()


@pytest.fixture(scope="module")
def matting_folder(tmp_path_factory):
    return build_tiny_matting(tmp_path_factory.mktemp("matting") / "TinyMatting", (255, 255, 255))


def _images() -> list:
    images = asset_images()
    if len(images) < 2:
        pytest.skip("shared/assets/images not found")
    return images


def composite_on_white(path) -> Image.Image:
    """The asset's RGBA composited on an opaque white background (RGB: no alpha left)."""
    with Image.open(path) as src:
        rgba = src.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _run(pipe, image, out, texture: int, faces: int, **kw):
    with Stopwatch() as clock:
        result = image_to_glb(image, out, pipeline=pipe,
                              export=ExportConfig(target_faces=faces, texture_size=texture), **kw)
    return result, clock


# ---------------------------------------------------------------------------------------------- acceptance (CI)
def test_alpha_image_to_glb(pipe, tmp_path):
    image = _images()[0]
    progress = Recorder()
    result, clock = _run(pipe, image, tmp_path / "alpha.glb", 512, 20_000, steps=4, progress=progress)
    assert clock.within(TIME_LIMIT_S), f"{image.name}: {clock}"
    assert result.path.is_file() and result.export.bytes == result.path.stat().st_size
    assert result.pipeline.pipeline_type.name == "1024_cascade"  # pipeline.json default
    assert result.image.mode == "RGB"
    stages = progress.stages()
    assert stages[:5] == ["load", "background", "condition", "sparse_structure", "shape_lr"]
    assert stages[5:8] == ["shape_hr", "tex", "decode"] and stages[-1] == "export:write"
    assert ("sparse_structure", 4, 4) in progress.events and ("decode", 1, 1) in progress.events
    assert_valid_glb(result.path, 512)


def test_composited_image_through_background_removal(pipe, matting_folder, tmp_path):
    image = composite_on_white(_images()[1])
    result, clock = _run(pipe, image, tmp_path / "matted.glb", 512, 20_000, steps=4,
                           matting_model=matting_folder, offline=True)
    assert clock.within(TIME_LIMIT_S), str(clock)
    assert max(result.image.size) < max(image.size)  # cropped around the matted object
    assert_valid_glb(result.path, 512)


@pytest.fixture
def one_torch_thread():
    """Run single-threaded, then restore. On the shared 2-core machine a second intra-op thread mostly waits for a
    core: spinning OpenMP workers inflate both the wall and the CPU time the 60 s limit is checked against
    (measured 6x on closest-point queries under load), while one thread's CPU time is the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["alpha", "composite"])
@pytest.mark.parametrize("index", range(len(asset_images())))
def test_every_asset_image_to_glb(pipe, matting_folder, tmp_path, index, variant, one_torch_thread):
    path = asset_images()[index]
    image = path if variant == "alpha" else composite_on_white(path)
    result, clock = _run(pipe, image, tmp_path / f"{path.stem[:12]}_{variant}.glb", 1024, 50_000,
                           matting_model=matting_folder, offline=True)
    assert clock.within(TIME_LIMIT_S), f"{path.name} ({variant}): {clock}"
    assert_valid_glb(result.path, 1024)
    print(f"{path.name[:12]} ({variant}): {clock}; export stages "
          + ", ".join(f"{k} {v:.2f}" for k, v in result.export.timings.items()))


# ---------------------------------------------------------------------------------------------- bad inputs
def test_unwritable_output_path_fails_before_any_work(tmp_path):
    image = Image.new("RGBA", (32, 32))
    with pytest.raises(InputError, match=r"must end in '\.glb'"):
        image_to_glb(image, tmp_path / "missing" / "out.obj", pipeline=tmp_path / "no-pipeline-here")
    if hasattr(os, "mkfifo"):  # an existing special file is never written over
        os.mkfifo(tmp_path / "pipe.glb")
        with pytest.raises(InputError, match="named pipe"):
            image_to_glb(image, tmp_path / "pipe.glb", pipeline=tmp_path / "no-pipeline-here")
    with pytest.raises(InputError, match="is a directory"):
        image_to_glb(image, tmp_path, pipeline=tmp_path / "no-pipeline-here")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError):
        image_to_glb(image, blocker / "out.glb", pipeline=tmp_path / "no-pipeline-here")


def test_empty_foreground_and_unreadable_image(pipe, tmp_path):
    with pytest.raises(InputError, match="empty foreground"):
        image_to_glb(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), tmp_path / "x.glb", pipeline=pipe)
    with pytest.raises(InputError, match="does not exist"):
        image_to_glb(tmp_path / "nope.png", tmp_path / "x.glb", pipeline=pipe)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        image_to_glb(bad, tmp_path / "x.glb", pipeline=pipe)
    with pytest.raises(InputError, match="background"):
        image_to_glb(Image.new("RGBA", (8, 8)), tmp_path / "x.glb", pipeline=pipe, background="erase")
    with pytest.raises(InputError, match="pipeline type"):
        image_to_glb(Image.new("RGBA", (8, 8)), tmp_path / "x.glb", pipeline=pipe, pipeline_type="768")
    assert not (tmp_path / "x.glb").exists()


def test_nan_latent_is_a_clear_error(pipe, tmp_path):
    """A NaN that enters a latent (here through the shape normalisation) is caught before the next model runs."""
    shape = pipe.config.normalization("shape_slat")
    broken = Normalization(shape.mean, (float("nan"),) + tuple(shape.std[1:]))
    config = dataclasses.replace(pipe.config, normalizations={**pipe.config.normalizations, "shape_slat": broken})
    nan_pipe = Pipeline(config, pipe.models, image_cond_model=pipe.image_cond_model)
    image = _images()[0]
    with pytest.raises(InputError, match=r"NaN/Inf values in the latent entering shape_slat_decoder.*shape_lr"):
        image_to_glb(image, tmp_path / "nan.glb", pipeline=nan_pipe, steps=1)
    assert not (tmp_path / "nan.glb").exists()
    # the guard hooks are gone afterwards: the shared models still run normally
    assert not pipe.models("shape_slat_decoder")._forward_pre_hooks


def test_nan_from_a_model_is_a_clear_error(pipe, tmp_path):
    store = ModelStore(pipe.config)
    flow = store("sparse_structure_flow_model")
    flow.register_forward_hook(lambda _m, _a, out: torch.full_like(out, float("nan")))
    nan_pipe = Pipeline(pipe.config, store, image_cond_model=pipe.image_cond_model)
    with pytest.raises(InputError, match="NaN"):
        image_to_glb(_images()[0], tmp_path / "nan.glb", pipeline=nan_pipe, pipeline_type="512", steps=1)


def test_out_of_memory_names_the_setting_to_lower(pipe, tmp_path, monkeypatch):
    def oom(_key):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    oom_pipe = Pipeline(pipe.config, oom, image_cond_model=pipe.image_cond_model)
    with pytest.raises(OutOfMemoryError, match="pipeline type"):
        image_to_glb(_images()[0], tmp_path / "oom.glb", pipeline=oom_pipe, pipeline_type="512", steps=1)

    import trellis2_core.api as api

    def export_oom(*_a, **_k):
        raise MemoryError()

    monkeypatch.setattr(api, "export_glb", export_oom)
    with pytest.raises(OutOfMemoryError, match="texture size.*1024"):
        _run(pipe, _images()[0], tmp_path / "oom.glb", 1024, 1000, pipeline_type="512", steps=1)


def test_cancel_between_steps(pipe, tmp_path):
    with pytest.raises(CancelledError):
        image_to_glb(_images()[0], tmp_path / "c.glb", pipeline=pipe, pipeline_type="512", steps=3,
                     progress=Recorder(cancel_at="sparse_structure"))
    assert not (tmp_path / "c.glb").exists()


def test_sampler_overrides_merge():
    from trellis2_core.api import sampler_overrides

    o = sampler_overrides(steps=5, guidance=3.0, stages={"tex_slat": {"steps": 2}})
    assert o.sparse_structure == {"steps": 5, "guidance_strength": 3.0}
    assert o.shape_slat == {"steps": 5, "guidance_strength": 3.0}
    assert o.tex_slat == {"steps": 2}
    with pytest.raises(InputError, match="unknown sampler stage"):
        sampler_overrides(stages={"texture": {}})


def test_mask_path_input(pipe, tmp_path):
    image = _images()[0]
    with Image.open(image) as src:
        alpha = src.convert("RGBA").getchannel("A")
        rgb = src.convert("RGB")
    mask_path = tmp_path / "mask.png"
    alpha.save(mask_path)
    result, _ = _run(pipe, rgb, tmp_path / "mask.glb", 256, 5_000, mask=mask_path, pipeline_type="512", steps=2)
    assert result.path.is_file()
    expected = np.asarray(prepare_image(rgb, mask=alpha))
    assert np.array_equal(np.asarray(result.image), expected)


def test_mask_files_use_alpha_or_luminance(tmp_path):
    from trellis2_core.api import load_mask

    bw = np.zeros((16, 16, 3), np.uint8)
    bw[4:12, 4:12] = 255
    Image.fromarray(bw, "RGB").save(tmp_path / "rgb_mask.png")
    Image.fromarray(bw, "RGB").convert("RGBA").save(tmp_path / "opaque_rgba_mask.png")
    cut = np.zeros((16, 16, 4), np.uint8)
    cut[4:12, 4:12, 3] = 255
    Image.fromarray(cut, "RGBA").save(tmp_path / "alpha_mask.png")
    for name in ("rgb_mask.png", "opaque_rgba_mask.png", "alpha_mask.png"):
        m = load_mask(tmp_path / name)
        assert m.mode == "L" and np.array_equal(np.asarray(m) > 127, bw[..., 0] > 127), name
    arr = np.ones((4, 4), bool)
    assert load_mask(arr) is arr


def test_export_as_a_dict_and_a_phone_photo_with_exif_rotation(pipe, tmp_path):
    """``export`` may be a dict of ExportConfig fields; a file whose EXIF says 'rotate' is used upright."""
    with Image.open(_images()[0]) as src:
        upright = src.convert("RGBA")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores it; EXIF 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "phone.png"
    stored.save(photo, exif=exif.tobytes())
    result = image_to_glb(photo, tmp_path / "phone.glb", pipeline=pipe, pipeline_type="512", steps=1,
                          export={"texture_size": 256, "target_faces": 5_000})
    assert result.path.is_file() and result.export.faces <= 5_000
    assert np.array_equal(np.asarray(result.image), np.asarray(prepare_image(upright)))
