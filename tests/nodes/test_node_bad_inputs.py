"""Bad IMAGE/MASK tensors, widget values and socket objects: each node refuses them with the node title and the
input/widget name, before it touches a model (the pipeline handle here fails the test when anything reaches it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS as M
from nodes.images import check_image, check_mask, to_pil
from nodes.runtime import PipelineHandle
from trellis2_core.errors import BackendError, InputError


class _Untouchable:
    """Stands in for the pipeline: any use means a model would load before the inputs were checked."""

    def __getattr__(self, name):
        raise AssertionError(f"the pipeline was used ({name}) before the inputs were checked")


@pytest.fixture()
def guard() -> PipelineHandle:
    return PipelineHandle(pipeline=_Untouchable(), source="guard", root=Path("."), device=torch.device("cpu"),
                          vram_preset="high")


def _rgba(b: int = 1, size: int = 32) -> torch.Tensor:
    img = torch.zeros(b, size, size, 4)
    img[..., :3] = 0.5
    img[:, 8:24, 8:24, 3] = 1.0
    return img


def _good_mask(b: int = 1, size: int = 32) -> torch.Tensor:
    m = torch.zeros(b, size, size)
    m[:, 8:24, 8:24] = 1.0
    return m


BAD_IMAGES = {
    "nan": (lambda: _rgba().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN"),
    "inf": (lambda: torch.full((1, 32, 32, 3), float("inf")), "infinite"),
    "rank3": (lambda: torch.zeros(32, 32, 3), r"shape \[32, 32, 3\].*batch dimension"),
    "rank2": (lambda: torch.zeros(32, 32), "MASK is not an IMAGE"),
    "rank5": (lambda: torch.zeros(1, 1, 32, 32, 3), "expected a ComfyUI IMAGE"),
    "two_channels": (lambda: torch.zeros(1, 32, 32, 2), "has 2 channels"),
    "channels_first": (lambda: torch.zeros(1, 3, 32, 32), "channels-first"),
    "empty_batch": (lambda: torch.zeros(0, 32, 32, 3), "batch is empty"),
    "no_pixels": (lambda: torch.zeros(1, 0, 32, 3), "no pixels"),
    "0..255_float": (lambda: torch.full((1, 32, 32, 3), 200.0), "0..255 values"),
    "-1..1": (lambda: torch.linspace(-1, 1, 32 * 32 * 3).reshape(1, 32, 32, 3), r"\[-1, 1\]"),
    "int32": (lambda: torch.zeros(1, 32, 32, 3, dtype=torch.int32), "dtype int32"),
    "not_a_tensor": (lambda: np.zeros((1, 32, 32, 3), np.float32), "ndarray"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_encode_image_refuses_bad_image_tensors_before_any_model(guard, case):
    make, words = BAD_IMAGES[case]
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2EncodeImage"]().encode(guard, make(), "512 and 1024", True)
    assert str(err.value).startswith("Encode Image (TRELLIS.2): input 'image'")


@pytest.mark.parametrize("case", ["nan", "rank3", "two_channels", "empty_batch", "0..255_float"])
def test_remove_background_and_image_to_3d_refuse_them_too(guard, case, output_dir):
    make, words = BAD_IMAGES[case]
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2RemoveBackground"]().remove(make(), "auto", 1024, False, "unused")
    assert "Remove Background (TRELLIS.2): input 'image'" in str(err.value)
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2ImageTo3D"]().generate(guard, make(), 42, "512", 2, "t", 256, 1000, "OPAQUE", True, "png")
    assert "Image to 3D (TRELLIS.2): input 'image'" in str(err.value)


def test_unambiguous_tensors_are_converted():
    u8 = (_rgba() * 255).to(torch.uint8)
    checked = check_image(u8)
    assert checked.dtype == torch.float32 and torch.allclose(checked, _rgba(), atol=1 / 255)
    assert to_pil(checked).mode == "RGBA"  # 4 channels: the alpha is the transparency
    assert to_pil(check_image(torch.full((1, 4, 4, 1), 0.5))).mode == "RGB"  # grey
    overshoot = check_image(torch.full((1, 4, 4, 3), 1.004))  # rounding noise of an upstream node: clamped
    assert float(overshoot.max()) == 1.0
    image = check_image(torch.zeros(2, 8, 8, 3))
    assert check_mask(torch.ones(8, 8, dtype=torch.bool), image).shape == (1, 8, 8)
    assert check_mask(torch.ones(2, 8, 8, 1), image).shape == (2, 8, 8)  # [B, H, W, 1]


BAD_MASKS = {
    "other_size": (lambda: _good_mask(size=64), "MASK is 64x64 but the image is 32x32"),
    "batch_3_for_2": (lambda: _good_mask(3), "3 masks for 2 images"),
    "nan": (lambda: _good_mask(1) * float("nan"), "NaN"),
    "0..255": (lambda: _good_mask(1) * 255, "0..255 values"),
    "image_as_mask": (lambda: torch.zeros(2, 32, 32, 3), "IMAGE is not a MASK"),
    "int64": (lambda: _good_mask(1).long(), "dtype int64"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_encode_image_refuses_bad_masks(guard, case):
    make, words = BAD_MASKS[case]
    image = _rgba(2)[..., :3].contiguous()
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2EncodeImage"]().encode(guard, image, "512 and 1024", True, mask=make())
    assert "Encode Image (TRELLIS.2): input 'mask'" in str(err.value)


def test_remove_background_mask_size_rules():
    rb = M["Trellis2RemoveBackground"]()
    image = _rgba()[..., :3].contiguous()
    with pytest.raises(InputError, match="input 'mask': the MASK is 64x64"):
        rb.remove(image, "use mask", 1024, False, "unused", mask=_good_mask(size=64))
    with pytest.raises(InputError, match="input 'mask': the MASK is 64x64"):  # a real mask of another picture
        rb.remove(image, "auto", 1024, False, "unused", mask=1 - _good_mask(size=64))
    with pytest.raises(InputError, match="'keep alpha': the image has no transparency"):  # LoadImage's placeholder
        rb.remove(image, "keep alpha", 1024, False, "unused", mask=torch.zeros(1, 64, 64))
    img, obj = rb.remove(image, "use mask", 1024, False, "unused", mask=_good_mask())
    assert img.shape == (1, 32, 32, 3) and float(obj.sum()) == 256.0
    with pytest.raises(InputError, match="widget 'max_size' must be 0 .* or at least 8"):
        rb.remove(image, "use mask", 4, False, "unused", mask=_good_mask())
    with pytest.raises(InputError, match="widget 'method' must be one of"):
        rb.remove(image, "magic", 1024, False, "unused")


def test_speck_foreground_fails_in_encode_image_and_image_to_3d(guard, output_dir):
    speck = torch.zeros(1, 32, 32, 4)
    speck[0, 5, 5, 3] = 1.0
    with pytest.raises(InputError, match=r"image 0: foreground too small"):
        M["Trellis2EncodeImage"]().encode(guard, speck, "512 and 1024", True)
    two = torch.cat([_rgba(), speck])  # the second item fails before the first one is generated
    with pytest.raises(InputError, match=r"Image to 3D \(TRELLIS.2\): image 1: foreground too small"):
        M["Trellis2ImageTo3D"]().generate(guard, two, 42, "512", 2, "t", 256, 1000, "OPAQUE", True, "png")


@pytest.mark.parametrize("widget, value, words", [
    ("seed", -1, "widget 'seed' must be in 0..18446744073709551615"),
    ("seed", 2**64, "widget 'seed' must be in 0..18446744073709551615"),
    ("steps", 0, "widget 'steps' must be in 1..200"),
    ("steps", 10**9, "widget 'steps' must be in 1..200"),
    ("steps", 2.5, "widget 'steps' must be a whole number"),
    ("resolution", "1024000_cascade", "widget 'resolution' must be one of"),
    ("texture_size", 7, "widget 'texture_size' must be in 256..8192"),
    ("target_faces", -5, "widget 'target_faces' must be in 0.."),
    ("target_faces", 2**24 + 1, "widget 'target_faces' must be in 0..16777216"),
    ("alpha_mode", "GLASS", "widget 'alpha_mode' must be one of"),
])
def test_image_to_3d_widgets(guard, output_dir, widget, value, words):
    args = dict(seed=42, resolution="512", steps=2, filename_prefix="t", texture_size=256, target_faces=1000,
                alpha_mode="OPAQUE", double_sided=True, texture_format="png")
    args[widget] = value
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2ImageTo3D"]().generate(guard, _rgba(), **args)
    assert str(err.value).startswith("Image to 3D (TRELLIS.2): widget")


def _sampler(**over):
    values = dict(steps=2, guidance_strength=7.5, guidance_rescale=0.5, guidance_interval_start=0.6,
                  guidance_interval_end=1.0, rescale_t=3.0)
    values.update(over)
    return values


@pytest.mark.parametrize("over, words", [
    ({"steps": 0}, "widget 'steps' must be in 1..200"),
    ({"guidance_strength": float("nan")}, "widget 'guidance_strength' must be a finite number"),
    ({"guidance_strength": -1.0}, r"widget 'guidance_strength' must be in \[0, 30\]"),
    ({"guidance_strength": 1e308}, r"widget 'guidance_strength' must be in \[0, 30\]"),
    ({"rescale_t": float("inf")}, "widget 'rescale_t' must be a finite number"),
    ({"guidance_interval_start": 0.9, "guidance_interval_end": 0.1}, "must not exceed guidance_interval_end"),
])
def test_sampler_widgets(guard, over, words):
    from nodes.types import CondAsset
    from trellis2_core.pipeline.stages import Conditioning

    cond = CondAsset(cond=Conditioning(torch.zeros(1, 4, 8)), image=None)
    with pytest.raises(InputError, match=words) as err:
        M["Trellis2SampleStructure"]().sample(guard, cond, 42, **_sampler(**over))
    assert str(err.value).startswith("Sample Structure (TRELLIS.2): widget")


def test_sample_shape_widgets_and_sockets(guard):
    from nodes.types import CondAsset
    from trellis2_core.pipeline.stages import Conditioning

    cond = CondAsset(cond=Conditioning(torch.zeros(1, 4, 8)), image=None)
    shape = M["Trellis2SampleShape"]()
    with pytest.raises(InputError, match="input 'structure' needs the output of Sample Structure"):
        shape.sample(guard, cond, None, "512", 49152, 0, **_sampler())
    with pytest.raises(InputError, match="input 'conditioning' needs the output of Encode Image"):
        shape.sample(guard, torch.zeros(3), None, "512", 49152, 0, **_sampler())
    with pytest.raises(InputError, match="input 'pipeline' needs the output of Load TRELLIS.2 Model"):
        shape.sample("microsoft/TRELLIS.2-4B", cond, None, "512", 49152, 0, **_sampler())
    with pytest.raises(InputError, match="input 'shape' needs the output of Sample Shape"):
        M["Trellis2SampleMaterial"]().sample(guard, cond, object(), 0, **_sampler())


def test_load_node_widgets(tiny_pipeline):
    load = M["Trellis2LoadModel"]()
    with pytest.raises(InputError, match="Load TRELLIS.2 Model: widget 'precision' must be one of"):
        load.load("x", "fp8", "auto", "high", "cpu", custom_source=str(tiny_pipeline))
    with pytest.raises(InputError, match="widget 'vram_preset' must be one of"):
        load.load("x", "auto", "auto", "huge", "cpu", custom_source=str(tiny_pipeline))
    with pytest.raises(InputError, match="widget 'device' must be one of"):
        load.load("x", "auto", "auto", "high", "cuda:7", custom_source=str(tiny_pipeline))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="widget 'device' 'cuda': this PyTorch .* sees no CUDA/ROCm GPU"):
            load.load("x", "auto", "auto", "high", "cuda", custom_source=str(tiny_pipeline))


def test_hub_warnings_are_printed_once_under_a_root_handler(tiny_pipeline):
    import io
    import logging

    from nodes.load import _one_copy_of_hub_logs

    pytest.importorskip("huggingface_hub")
    hub = logging.getLogger("huggingface_hub")
    saved_handlers, saved_root = list(hub.handlers), list(logging.getLogger().handlers)
    own, root_out = io.StringIO(), io.StringIO()
    try:
        hub.handlers[:] = [logging.StreamHandler(own)]  # what huggingface_hub attaches at import
        logging.getLogger().handlers[:] = [logging.StreamHandler(root_out)]  # ComfyUI's console handler
        _one_copy_of_hub_logs()
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        assert (own.getvalue() + root_out.getvalue()).count("Retrying in 1s") == 1
    finally:
        hub.handlers[:] = saved_handlers
        logging.getLogger().handlers[:] = saved_root
