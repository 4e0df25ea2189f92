"""Adversarial images and masks for the preprocessing (spec §2): each is a clear InputError or converts properly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.tools.matting_fixture import build_tiny_matting
from trellis2_core.errors import InputError, WeightsError
from trellis2_core.preprocess import crop_to_foreground, preprocess_image
from trellis2_core.preprocess.background import load_matting_model, normalize_mode, prepare_image, resolve_background
from trellis2_core.preprocess.image import MIN_FOREGROUND_SIDE


def _cutout(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A grey RGBA picture, opaque inside ``box`` (x0, y0, x1, y1 exclusive), transparent elsewhere."""
    arr = np.zeros((size[1], size[0], 4), np.uint8)
    arr[..., :3] = 128
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(arr, "RGBA")


@pytest.mark.parametrize("box", [(10, 10, 11, 11), (10, 10, 12, 11), (10, 10, 13, 13)], ids=["1px", "2px", "3x3"])
def test_speck_of_foreground_is_too_small(box):
    img = _cutout((64, 64), box)
    with pytest.raises(InputError, match=r"^foreground too small: \d+ px"):
        crop_to_foreground(img)
    with pytest.raises(InputError, match="foreground too small"):
        prepare_image(img)  # background='auto' keeps the alpha
    with pytest.raises(InputError, match="foreground too small"):
        preprocess_image(img.convert("RGB"), np.asarray(img.getchannel("A")))  # as a mask


def test_smallest_accepted_foreground_crops_to_the_minimum():
    side = MIN_FOREGROUND_SIDE
    out = prepare_image(_cutout((64, 64), (10, 10, 10 + side + 1, 10 + side + 1)))
    assert out.size == (side, side) and out.mode == "RGB"


def test_one_pixel_image_is_refused_whatever_the_background_mode():
    opaque = Image.new("RGBA", (1, 1), (200, 10, 10, 255))
    with pytest.raises(InputError, match="foreground too small"):
        prepare_image(opaque, mask=np.ones((1, 1), np.uint8) * 255)
    with pytest.raises(InputError, match="foreground too small"):
        prepare_image(opaque, matting=lambda rgb: np.full((1, 1), 255, np.uint8))
    with pytest.raises(InputError, match="image too small"):
        prepare_image(opaque, background="none")


def test_zero_pixel_images_are_input_errors_not_type_errors():
    for mode in ("RGBA", "RGB", "L"):
        empty = Image.new(mode, (0, 0))
        with pytest.raises(InputError, match=r"empty \(0x0"):
            resolve_background(empty)
        with pytest.raises(InputError, match=r"empty \(0x0"):
            prepare_image(empty)
        with pytest.raises(InputError, match=r"empty \(0x0"):
            preprocess_image(empty)


def test_fully_transparent_image_and_empty_mask():
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(Image.new("RGBA", (32, 32), (50, 60, 70, 0)))
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(Image.new("RGB", (32, 32)), mask=np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(Image.new("RGB", (32, 32)), matting=lambda rgb: np.zeros((32, 32), np.uint8))


@pytest.mark.parametrize("bad, words", [
    (np.full((32, 32), 255.0, np.float32), "range from 255 to 255"),
    (np.full((32, 32), -0.5, np.float32), "must be 0..1"),
    (np.full((32, 32), np.inf, np.float32), "NaN or infinite"),
    (np.zeros((32, 32), np.int32), "dtype int32"),
    (np.zeros((2, 32, 32), np.uint8), "2-D"),
])
def test_bad_masks_are_named(bad, words):
    with pytest.raises(InputError, match=words):
        prepare_image(Image.new("RGB", (32, 32)), mask=bad)


def _sixteen_bit_grey() -> Image.Image:
    arr = np.zeros((32, 32), np.uint16)
    arr[8:24, 8:24] = 60000
    return Image.fromarray(arr)  # mode I;16


@pytest.mark.parametrize("make", [
    lambda: _sixteen_bit_grey(),
    lambda: _sixteen_bit_grey().convert("I"),  # 16-bit values in a 32-bit mode (how some TIFFs open)
    lambda: Image.fromarray((np.asarray(_sixteen_bit_grey(), np.float32) / 65535.0).astype(np.float32), "F"),
    lambda: Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
    lambda: Image.new("RGB", (32, 32), (9, 9, 9)).convert("P"),
], ids=["I;16", "I-16bit", "F-unit", "CMYK", "P"])
def test_odd_modes_convert_to_8_bit(make):
    img = normalize_mode(make())
    assert img.mode in ("L", "RGB", "RGBA")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    out = prepare_image(make(), mask=mask)
    assert out.mode == "RGB" and out.size == (14, 14)
    if make().mode.startswith("I") or make().mode == "F":  # the bright square stays bright (scaled, not clipped)
        assert 225 <= np.asarray(normalize_mode(make()))[16, 16] <= 235 and np.asarray(normalize_mode(make()))[0, 0] == 0


def test_palette_with_transparency_and_la_keep_their_alpha_on_request():
    rgba = _cutout((32, 32), (4, 4, 28, 28))
    for img in (rgba.convert("LA"), rgba.convert("PA"), rgba.quantize(colors=4).convert("PA")):
        assert prepare_image(img, background="keep").size == (22, 22)


def test_float_image_with_nan_is_an_input_error():
    arr = np.zeros((16, 16), np.float32)
    arr[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        normalize_mode(Image.fromarray(arr, "F"))


def test_max_size_must_be_a_useful_size():
    for bad in (0, 3, -1, 1.5, True):
        with pytest.raises(InputError, match="max_size"):
            prepare_image(_cutout((32, 32), (4, 4, 28, 28)), max_size=bad)


def test_matting_weights_with_an_integer_dtype_are_a_weights_error(tmp_path):
    folder = build_tiny_matting(tmp_path / "TinyMatting", (255, 255, 255))
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    state["scale"] = state["scale"].to(torch.int32)
    save_file(state, str(weights))
    with pytest.raises(WeightsError, match=r"scale: expected float32.*found int32"):
        load_matting_model(folder)


def test_truncated_matting_weights_name_the_file(tmp_path):
    folder = build_tiny_matting(tmp_path / "TinyMatting", (255, 255, 255))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(WeightsError, match="model.safetensors: unreadable or truncated"):
        load_matting_model(folder)


def test_matting_config_with_wrong_types_is_a_weights_error(tmp_path):
    import json

    folder = build_tiny_matting(tmp_path / "TinyMatting", (255, 255, 255))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageSegmentation": 42}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="auto_map"):
        load_matting_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json: unreadable"):
        load_matting_model(folder)
