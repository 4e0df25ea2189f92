"""``Pipeline.from_pretrained('comfy:<bundle>', models_dir=...)`` and the CLI's ``--pipeline comfy:<bundle>
--models-dir DIR``: ComfyUI core's TRELLIS.2 files (written here in core's layout from the tiny random pipeline)
are found, checked before any model loads, and run end to end."""
from __future__ import annotations

import pytest
import torch

from tests.loading.test_comfy_files import bundle_tensors, dino_tensors, save, write_core_dir
from tests.tools.glb_checks import asset_images, assert_valid_glb, require_tiny_pipeline
from trellis2_core.__main__ import main
from trellis2_core.errors import InputError, WeightsError
from trellis2_core.loading import load_model
from trellis2_core.loading.comfy_pipeline import list_comfy_sources
from trellis2_core.loading.random_pipeline import write_random_pipeline
from trellis2_core.pipeline.pipeline import Pipeline

NAME = "comfy:trellis_2_bf16"


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("official") / "pipe", size="tiny", seed=5)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, official_dir):
    return write_core_dir(tmp_path_factory.mktemp("core") / "models", official_dir)


def test_the_tiny_core_files_are_listed_with_their_size_inferred(models_dir):
    assert list_comfy_sources(models_dir) == [NAME]
    pipe = Pipeline.from_pretrained(NAME, models_dir=models_dir)
    assert pipe.comfy_files is not None and pipe.comfy_files.specs["sparse_structure_flow_model"][1][
        "model_channels"] == 64


def test_models_load_with_the_official_weights(models_dir, official_dir):
    pipe = Pipeline.from_pretrained(NAME, models_dir=models_dir, dtype_override="float32")
    key = "shape_slat_flow_model_1024"
    ours = pipe.models(key).state_dict()
    ref = load_model(official_dir, key, dtype_override="float32").state_dict()
    for name, tensor in ref.items():  # core's files are bf16 re-encodings of the official weights
        torch.testing.assert_close(ours[name], tensor.to(torch.bfloat16).float(), atol=0, rtol=0)


def test_comfy_source_needs_a_models_dir():
    with pytest.raises(InputError, match="models_dir"):
        Pipeline.from_pretrained(NAME)


def test_check_ready_refuses_512_and_a_broken_file_before_loading(models_dir, official_dir, tmp_path):
    pipe = Pipeline.from_pretrained(NAME, models_dir=models_dir)
    assert pipe.check_ready("1024_cascade").name == "1024_cascade"
    with pytest.raises(WeightsError, match="'512'"):
        pipe.check_ready("512")
    assert pipe.models.loaded == ()
    broken = write_core_dir(tmp_path / "models", official_dir)
    tensors = bundle_tensors(official_dir)
    del tensors["model.img2shape.blocks.0.mlp.mlp.0.weight"]
    save(tensors, broken / "diffusion_models" / "trellis_2_bf16.safetensors")
    pipe = Pipeline.from_pretrained(NAME, models_dir=broken)
    with pytest.raises(WeightsError, match=r"1 missing keys: blocks\.0\.mlp\.mlp\.0\.weight"):
        pipe.check_ready("1024")
    assert pipe.models.loaded == ()


def test_missing_file_names_what_to_download(official_dir, tmp_path):
    root = write_core_dir(tmp_path / "models", official_dir, texture_vae=False)
    with pytest.raises(WeightsError, match="texture VAE.*trellis_2_texture_vae_bf16"):
        Pipeline.from_pretrained(NAME, models_dir=root)


def golden_core_dir(root):
    """Core-layout files of the tiny golden pipeline (its weights give small shapes: fast end-to-end runs)."""
    golden = require_tiny_pipeline()
    write_core_dir(root, golden, dino=False)
    save(dino_tensors(golden, folder="dinov3-tiny"), root / "clip_vision" / "dino_v3_vit_l.safetensors")
    return root


def test_cli_runs_on_core_files(tmp_path, capsys):
    images = asset_images()
    if not images:
        pytest.skip("shared/assets/images not found")
    models_dir = golden_core_dir(tmp_path / "models")
    out = tmp_path / "core.glb"
    rc = main([str(images[0]), "-o", str(out), "--pipeline", NAME, "--models-dir", str(models_dir), "--type",
               "1024_cascade",
               "--steps", "1", "--texture-size", "256", "--faces", "5000", "--offline", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert_valid_glb(out, 256)
    rc = main([str(images[0]), "-o", str(tmp_path / "x.glb"), "--pipeline", NAME, "--models-dir", str(models_dir),
               "--type", "512", "-q"])
    assert rc == 2 and "'512'" in capsys.readouterr().err
