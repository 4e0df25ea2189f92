"""Pluggable background handling (spec §2 steps 1–3): keep / mask / matting model / none, modes, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tools.matting_fixture import IMAGENET_MEAN, IMAGENET_STD, build_tiny_matting
from trellis2_core.errors import BackendError, InputError, WeightsError
from trellis2_core.preprocess import preprocess_image
from trellis2_core.preprocess.background import (
    BiRefNetMatting, load_matting_model, needs_matting, normalize_mode, prepare_image, remove_background,
    resolve_background,
)


def _scene(w: int = 96, h: int = 64, bg: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An opaque RGB image: a dark red box on a plain background."""
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = bg
    arr[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (140, 20, 30)
    return Image.fromarray(arr, "RGB")


def _rgba_box(w: int = 40, h: int = 30) -> Image.Image:
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[..., :3] = 90
    arr[5:20, 10:30, 3] = 255
    return Image.fromarray(arr, "RGBA")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_matting(tmp_path_factory.mktemp("tiny_matting") / "TinyMatting", (255, 255, 255))


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_matting_model(tiny_folder, offline=True)


# ---------------------------------------------------------------------------------------------- mode rules
def test_resolve_background_follows_the_official_alpha_rule():
    rgba = _rgba_box()
    assert resolve_background(rgba) == "keep"
    assert resolve_background(rgba.convert("RGB").convert("RGBA")) == "model"  # fully opaque RGBA
    assert resolve_background(rgba.convert("LA")) == "model"  # §2 step 1: LA is not taken as matted
    p_trans = Image.new("P", (8, 8), 0)
    p_trans.info["transparency"] = 0
    assert resolve_background(p_trans) == "model"
    assert resolve_background(Image.new("L", (8, 8))) == "model"
    assert resolve_background(rgba, "auto", mask=np.ones((30, 40), bool)) == "mask"
    assert resolve_background(rgba, "none") == "none" and resolve_background(rgba, "model") == "model"
    assert needs_matting(Image.new("RGB", (4, 4))) and not needs_matting(rgba)


@pytest.mark.parametrize("background", ["keep", "model", "none"])
def test_mask_conflicts_and_unknown_modes_are_clear_errors(background):
    with pytest.raises(InputError, match="mask"):
        resolve_background(_rgba_box(), background, mask=np.ones((30, 40), bool))
    with pytest.raises(InputError, match="needs a mask"):
        resolve_background(_rgba_box(), "mask")
    with pytest.raises(InputError, match="background must be one of"):
        resolve_background(_rgba_box(), "remove")


def test_keep_on_golden_inputs_is_bit_exact(golden_dir):
    from safetensors.numpy import load_file

    for i in range(3):
        meta = json.loads((golden_dir / f"preprocess_{i}.json").read_text())
        gold = load_file(str(golden_dir / f"preprocess_{i}.safetensors"))["output.rgb"]
        with Image.open(golden_dir / meta["params"]["input_png"]) as img:
            out = prepare_image(img.copy(), background="auto")
            assert np.array_equal(np.asarray(out), gold)
            assert np.array_equal(np.asarray(prepare_image(img.copy(), background="keep")), gold)


def test_mask_mode_matches_preprocess_image():
    img = _scene()
    mask = np.asarray(img.convert("L")) < 128
    out = prepare_image(img, mask=mask)
    assert np.array_equal(np.asarray(out), np.asarray(preprocess_image(img, mask)))


def test_none_mode_returns_the_image_untouched():
    img = _scene()
    assert prepare_image(img, background="none") is img
    with pytest.raises(InputError, match="mask"):
        prepare_image(img, background="none", mask=np.ones((64, 96), bool))


# ---------------------------------------------------------------------------------------------- matting model
def test_matting_follows_spec_step_3(tiny):
    """1024² bilinear → ImageNet normalise → last output → sigmoid → ×255 truncation → bicubic back."""
    img = _scene(120, 80)
    seen = []
    handle = tiny.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        mask = tiny(img)
    finally:
        handle.remove()
    x = seen[0]
    arr = np.asarray(img.resize((1024, 1024), Image.BILINEAR), dtype=np.float32) / 255  # [1024, 1024, 3]
    want = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    assert tuple(x.shape) == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    with torch.no_grad():
        logits = tiny.model(x)[-1]
    u8 = (torch.sigmoid(logits)[0, 0] * 255).to(torch.uint8).numpy()
    expected = Image.fromarray(u8, "L").resize(img.size, Image.BICUBIC)
    assert mask.mode == "L" and mask.size == img.size
    assert np.array_equal(np.asarray(mask), np.asarray(expected))
    a = np.asarray(mask)
    assert a[40, 60] > 204 and a[2, 2] < 50  # object vs white background (the side output would give 127)


def test_model_path_crops_the_matted_object(tiny):
    out = prepare_image(_scene(96, 64), matting=tiny)  # RGB → auto → model
    # box 32 px wide (x 32..63) and 32 tall (y 16..47): bbox side 31 -> crop side 30, premultiplied on black
    assert out.mode == "RGB" and out.size == (30, 30)
    assert np.asarray(out)[15, 15].tolist() == [140, 20, 30]


def test_composited_asset_recovers_the_alpha(tiny, golden_dir):
    from tests.tools.glb_checks import asset_images

    images = asset_images()
    if not images:
        pytest.skip("shared/assets/images not found")
    with Image.open(images[0]) as src:
        rgba = src.convert("RGBA").resize((256, 256), Image.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    composite = Image.alpha_composite(white, rgba).convert("RGB")
    matted = remove_background(composite, tiny)
    truth = np.asarray(rgba.getchannel("A")) > 204
    found = np.asarray(matted.getchannel("A")) > 204
    iou = (truth & found).sum() / max(1, (truth | found).sum())
    assert iou > 0.8, iou


def test_any_callable_can_matte():
    img = _scene()
    calls = []

    def matting(rgb):
        calls.append(rgb.size)
        return (np.asarray(rgb)[..., 1] < 128).astype(np.uint8) * 255  # green channel: the red box

    out = prepare_image(img, background="model", matting=matting)
    assert calls == [(96, 64)] and out.size == (30, 30)


def test_model_mode_without_a_model_is_a_clear_error():
    with pytest.raises(InputError, match="background removal is needed"):
        prepare_image(_scene())


# ---------------------------------------------------------------------------------------------- bad inputs
def test_empty_foreground_is_a_clear_error(tiny):
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(Image.new("RGB", (64, 48), (255, 255, 255)), matting=tiny)  # nothing but background
    transparent = Image.new("RGBA", (64, 48), (10, 20, 30, 0))
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(transparent)
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(transparent, background="keep")
    with pytest.raises(InputError, match="empty foreground"):
        prepare_image(_scene(), mask=np.zeros((64, 96), np.uint8))


def test_8k_image_is_downscaled_before_matting():
    w, h = 7680, 4320
    arr = np.full((h, w, 3), 250, dtype=np.uint8)
    arr[1000:3000, 2000:5000] = (30, 60, 200)
    img = Image.fromarray(arr, "RGB")
    del arr
    sizes = []

    def matting(rgb):
        sizes.append(rgb.size)
        return (np.asarray(rgb)[..., 2] > 128).astype(np.uint8) * 255

    out = prepare_image(img, matting=matting)
    assert sizes == [(1024, 576)]  # §2 step 2: int(W·s), int(H·s) with s = 1024 / 7680
    assert max(out.size) <= 1024 and out.mode == "RGB"


def test_grayscale_la_and_palette_images(tiny):
    gray = _scene().convert("L")
    assert prepare_image(gray, matting=tiny).mode == "RGB"
    la = _rgba_box().convert("LA")
    assert needs_matting(la)
    assert prepare_image(la, background="keep").size == (18, 18)  # its own alpha on request
    p = _scene().quantize(8)
    p.info["transparency"] = int(np.asarray(p)[0, 0])  # the white background's palette entry is transparent
    assert normalize_mode(p).mode == "RGBA"
    assert np.array_equal(np.asarray(normalize_mode(p).getchannel("A")) == 0, np.asarray(p) == p.info["transparency"])
    assert needs_matting(p)  # official: P is not taken as matted
    out = prepare_image(p, background="keep")
    assert out.mode == "RGB" and out.size == (30, 30)
    assert normalize_mode(_scene().quantize(8)).mode == "RGB"
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert np.array_equal(np.asarray(normalize_mode(sixteen)), np.asarray(gray))
    unit = Image.fromarray(np.asarray(gray, dtype=np.float32) / 255)
    assert unit.mode == "F" and np.array_equal(np.asarray(normalize_mode(unit)), np.asarray(gray))
    assert normalize_mode(_scene().convert("CMYK")).mode == "RGB"
    with pytest.raises(InputError, match="alpha channel"):
        prepare_image(_scene(), background="keep")


def test_missing_and_broken_model_folders(tmp_path, tiny_folder):
    with pytest.raises(WeightsError, match="not found"):
        load_matting_model(tmp_path / "nowhere", offline=True)
    with pytest.raises(WeightsError, match="Hugging Face"):
        load_matting_model("nobody-here/NoSuchMattingModel", offline=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(WeightsError, match="auto_map"):
        load_matting_model(plain, offline=True)
    short = build_tiny_matting(tmp_path / "short", weights={"scale": torch.ones(1), "bias": torch.zeros(1)})
    with pytest.raises(WeightsError, match="missing.*background"):
        load_matting_model(short, offline=True)
    extra = build_tiny_matting(tmp_path / "extra", weights={
        "background": torch.zeros(1, 3, 1, 1), "scale": torch.ones(1), "bias": torch.zeros(1),
        "head.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="unexpected.*head.weight"):
        load_matting_model(extra, offline=True)
    code = "import trellis2_no_such_package\n" + (tiny_folder / "tiny_matting.py").read_text()
    needs_pkg = build_tiny_matting(tmp_path / "needs_pkg", code=code)
    with pytest.raises(BackendError, match="trellis2_no_such_package"):
        load_matting_model(needs_pkg, offline=True)


def test_models_dir_lookup_and_device(tmp_path):
    build_tiny_matting(tmp_path / "rembg" / "TinyMatting")
    matting = load_matting_model("someone/TinyMatting", models_dir=tmp_path, device="cpu", offline=True)
    assert isinstance(matting, BiRefNetMatting) and matting.device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in matting.model.parameters())
    assert not matting.model.training
