"""DINOv3 conditioner (spec §3): golden features, 4.x/5.x key layouts, strict loading, fp32, errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

pytest.importorskip("transformers", reason="DINOv3 conditioning needs transformers (pip install transformers)")

from trellis2_core.errors import InputError, WeightsError  # noqa: E402
from trellis2_core.loading import load_image_cond_model  # noqa: E402
from trellis2_core.models.dinov3 import DinoV3FeatureExtractor  # noqa: E402


def _close(cand: torch.Tensor, gold: torch.Tensor, tol: dict) -> None:
    assert cand.shape == gold.shape and cand.dtype == torch.float32
    err = (cand.double() - gold.double()).abs()
    lim = tol["atol"] + tol["rtol"] * gold.double().abs()
    assert bool((err <= lim).all()), f"max err {float(err.max()):.3g}"


@pytest.fixture(scope="module")
def tiny_dir(golden_dir):
    return golden_dir / "dinov3-tiny"


@pytest.fixture(scope="module")
def extractor(tiny_dir):
    return DinoV3FeatureExtractor.from_folder(tiny_dir)


@pytest.fixture(scope="module")
def image(golden_dir):
    with Image.open(golden_dir / "dinov3_input.png") as img:
        return img.copy()


def test_golden_dinov3_features(golden_dir, extractor, image):
    from safetensors.torch import load_file

    meta = json.loads((golden_dir / "dinov3_features.json").read_text())
    gold = load_file(str(golden_dir / "dinov3_features.safetensors"))
    for size in meta["params"]["image_sizes"]:
        name = f"output.cond_{size}"
        out = extractor.features(image, size)
        assert out.shape == (1, 1 + 4 + (size // 16) ** 2, 32)
        _close(out, gold[name], meta["tolerance"][name])


def test_model_is_fp32_eval_and_frozen(extractor):
    assert not extractor.training and not extractor.vit.training
    for p in extractor.parameters():
        assert p.dtype == torch.float32 and not p.requires_grad and not p.is_meta
    assert len(extractor.layers) == 2


def _copy(src, dst, transform):
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    shutil.copyfile(src / "config.json", dst / "config.json")
    save_file(transform(load_file(str(src / "model.safetensors"))), str(dst / "model.safetensors"))
    return dst


def test_5x_key_layout_and_fp16_file_load_the_same(tmp_path, tiny_dir, extractor, image):
    def to_5x_fp16(sd):
        return {("model." + k if k.startswith("layer.") else k): v.half() for k, v in sd.items()}

    other = DinoV3FeatureExtractor.from_folder(_copy(tiny_dir, tmp_path / "d5", to_5x_fp16))
    assert all(p.dtype == torch.float32 for p in other.parameters())
    ref = extractor.features(image, 512)
    out = other.features(image, 512)
    assert (out - ref).abs().max() < 5e-2  # same model, fp16-rounded weights


@pytest.mark.parametrize("change, match", [
    (lambda sd: {**sd, "layer.0.extra.weight": torch.zeros(3)}, "unexpected.*layer.0.extra.weight"),
    (lambda sd: {k: v for k, v in sd.items() if k != "norm.weight"}, "missing.*norm.weight"),
    (lambda sd: {**sd, "layer.1.norm1.weight": torch.zeros(7)}, r"norm1.weight: expected \[32\], found \[7\]"),
])
def test_strict_loading_errors(tmp_path, tiny_dir, change, match):
    folder = _copy(tiny_dir, tmp_path / "bad", change)
    with pytest.raises(WeightsError, match=match):
        DinoV3FeatureExtractor.from_folder(folder)


def test_missing_config_and_weights(tmp_path, tiny_dir):
    (tmp_path / "noconf").mkdir()
    shutil.copyfile(tiny_dir / "model.safetensors", tmp_path / "noconf" / "model.safetensors")
    with pytest.raises(WeightsError, match="config.json"):
        DinoV3FeatureExtractor.from_folder(tmp_path / "noconf")
    config = json.loads((tiny_dir / "config.json").read_text())
    assert DinoV3FeatureExtractor.from_folder(tmp_path / "noconf", config=config) is not None
    (tmp_path / "empty").mkdir()
    shutil.copyfile(tiny_dir / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(WeightsError, match="no DINOv3 weights"):
        DinoV3FeatureExtractor.from_folder(tmp_path / "empty")


def test_truncated_weights(tmp_path, tiny_dir):
    folder = tmp_path / "trunc"
    folder.mkdir()
    shutil.copyfile(tiny_dir / "config.json", folder / "config.json")
    data = (tiny_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="re-download"):
        DinoV3FeatureExtractor.from_folder(folder)


def test_input_errors(extractor, image):
    with pytest.raises(InputError, match="multiple of 16"):
        extractor.features(image, 500)
    with pytest.raises(InputError):
        extractor.features([], 512)
    extractor.train()
    try:
        with pytest.raises(InputError, match="eval"):
            extractor.features(image, 512)
    finally:
        extractor.eval()


def test_batch_of_images_matches_single(extractor, image):
    flipped = image.transpose(Image.FLIP_LEFT_RIGHT)
    both = extractor.features([image, flipped], 512)
    assert both.shape[0] == 2
    assert torch.allclose(both[1:], extractor.features(flipped, 512), atol=1e-5)


def test_load_image_cond_model_resolves_relative_to_the_pipeline(golden_dir, extractor, image):
    model = load_image_cond_model(golden_dir / "tiny-pipeline")
    assert torch.equal(model.features(image, 512), extractor.features(image, 512))


def test_load_image_cond_model_from_models_dir(tmp_path, golden_dir, tiny_dir):
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    cfg = json.loads((golden_dir / "tiny-pipeline" / "pipeline.json").read_text())
    cfg["args"]["image_cond_model"]["args"]["model_name"] = "someone/dinov3-test"
    (pipe / "pipeline.json").write_text(json.dumps(cfg))
    models = tmp_path / "models"
    shutil.copytree(tiny_dir, models / "someone" / "dinov3-test", copy_function=shutil.copyfile)
    assert load_image_cond_model(pipe, models_dir=models, offline=True) is not None
    with pytest.raises(WeightsError, match="someone/dinov3-test"):
        load_image_cond_model(pipe, offline=True)
