"""Image preprocessing (spec §2): golden cases bit-exact, masks, modes and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trellis2_core.errors import InputError
from trellis2_core.preprocess import crop_to_foreground, downscale, has_usable_alpha, premultiply, preprocess_image


def _rgba(w: int, h: int, box: tuple[int, int, int, int], alpha: int = 255, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[..., :3] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1, 3] = alpha
    return Image.fromarray(arr, "RGBA")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_golden_preprocess_exact(golden_dir, i):
    from safetensors.numpy import load_file

    meta = json.loads((golden_dir / f"preprocess_{i}.json").read_text())
    gold = load_file(str(golden_dir / f"preprocess_{i}.safetensors"))["output.rgb"]
    with Image.open(golden_dir / meta["params"]["input_png"]) as img:
        out = preprocess_image(img.copy())
    assert out.mode == "RGB"
    cand = np.asarray(out)
    assert cand.shape == gold.shape and cand.dtype == np.uint8
    assert np.array_equal(cand, gold)


def test_alpha_detection_rules():
    assert has_usable_alpha(_rgba(8, 8, (2, 2, 6, 6)))
    opaque = _rgba(8, 8, (0, 0, 8, 8))
    assert not has_usable_alpha(opaque)
    assert not has_usable_alpha(opaque.convert("LA"))
    assert not has_usable_alpha(Image.new("RGB", (4, 4)))


def test_downscale_truncates_size_and_never_upscales():
    img = Image.new("RGBA", (2050, 1001))
    assert downscale(img).size == (1024, int(1001 * (1024 / 2050)))
    small = Image.new("RGBA", (300, 200))
    assert downscale(small) is small


def test_crop_is_square_centred_with_zero_fill():
    # object touching the left/top border: the crop extends outside the image and is zero-filled
    img = _rgba(64, 48, (0, 0, 21, 11))  # bbox x 0..20, y 0..10 -> size 20, side 20
    out = crop_to_foreground(img)
    assert out.size == (20, 20)
    a = np.asarray(out)
    assert (a[:5, :, 3] == 0).all()  # rows above the image are transparent black
    assert (a[:5, :, :3] == 0).all()


def test_crop_odd_size_rounds_half_even():
    img = _rgba(40, 40, (5, 5, 16, 12))  # bbox x 5..15 (11 px), y 5..11: size 10, centre (10, 8)
    assert crop_to_foreground(img).size == (10, 10)


def test_premultiply_formula_and_truncation():
    arr = np.array([[[200, 100, 3, 128], [255, 255, 255, 0]]], dtype=np.uint8)
    out = np.asarray(premultiply(Image.fromarray(arr, "RGBA")))
    f = arr.astype(np.float32) / 255
    expect = (f[..., :3] * f[..., 3:4] * 255).astype(np.uint8)
    assert out.shape == (1, 2, 3)
    assert np.array_equal(out, expect)


def test_empty_foreground_is_an_input_error():
    img = _rgba(32, 32, (4, 4, 20, 20), alpha=204)  # alpha present but never above 204
    with pytest.raises(InputError, match="empty foreground"):
        preprocess_image(img)


def test_no_alpha_needs_a_mask():
    with pytest.raises(InputError, match="mask"):
        preprocess_image(Image.new("RGB", (16, 16), (10, 20, 30)))
    with pytest.raises(InputError, match="fully opaque"):
        preprocess_image(_rgba(16, 16, (0, 0, 16, 16)))


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_la_and_pa_transparency_is_not_a_matte(mode):
    img = _rgba(16, 16, (4, 4, 12, 12)).convert(mode)
    with pytest.raises(InputError, match=r"convert\('RGBA'\)"):
        preprocess_image(img)


def test_p_mode_with_transparency_is_not_a_matte():
    img = Image.new("P", (16, 16), 0)
    img.info["transparency"] = 0
    with pytest.raises(InputError, match=r"convert\('RGBA'\)"):
        preprocess_image(img)


def _mask_variants(mask_u8: np.ndarray):
    yield mask_u8
    yield Image.fromarray(mask_u8, "L")
    yield mask_u8 > 127
    yield mask_u8.astype(np.float32) / 255.0 + 1e-4  # float 0..1 (truncated back to the same uint8)


def test_mask_equals_alpha_path_for_every_mask_type():
    rgba = _rgba(60, 40, (10, 5, 40, 30), seed=3)
    expect = np.asarray(preprocess_image(rgba))
    rgb = rgba.convert("RGB")
    mask = np.asarray(rgba.getchannel("A")).copy()
    for m in _mask_variants(mask):
        assert np.array_equal(np.asarray(preprocess_image(rgb, m)), expect)


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "LA", "CMYK"])
def test_mask_works_for_any_image_mode(mode):
    img = _rgba(30, 30, (5, 5, 25, 25)).convert("RGB").convert(mode)
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:25, 5:25] = 255
    out = preprocess_image(img, mask)
    assert out.mode == "RGB" and out.size == (18, 18)  # bbox 5..24: size 19 (no +1), side 2*(19//2)


def test_mask_at_downscaled_size_and_size_mismatch():
    img = Image.new("RGB", (2048, 1024), (200, 100, 50))
    small = np.zeros((512, 1024), dtype=np.uint8)
    small[100:300, 200:500] = 255
    out = preprocess_image(img, small)
    assert out.size == (298, 298)  # bbox x 200..499 -> size 299 -> side 298
    with pytest.raises(InputError, match="mask size"):
        preprocess_image(img, np.zeros((10, 10), dtype=np.uint8))


def test_bad_mask_values_are_input_errors():
    img = Image.new("RGB", (8, 8))
    with pytest.raises(InputError):
        preprocess_image(img, np.full((8, 8), np.nan, dtype=np.float32))
    with pytest.raises(InputError):
        preprocess_image(img, np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(InputError):
        preprocess_image(img, np.zeros((8, 8), dtype=np.int64))
    with pytest.raises(InputError):
        preprocess_image("not an image")  # type: ignore[arg-type]
