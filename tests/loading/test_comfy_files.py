"""Loading ComfyUI core's own TRELLIS.2 files (spec comfy-core-weights.md): detection, the in-code pipeline
description, strict prefix-sliced loading, int8 convrot dequantisation, DINOv3 from a clip_vision file.

Core-layout files are written here from a tiny random pipeline in the official layout (bf16, like core's), so the
loaded models can be compared with the same weights loaded from the official layout. With ``$COMFYUI_DIR`` set, the
key sets and shapes of core's own full-size model classes are compared with ours.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from trellis2_core.errors import WeightsError
from trellis2_core.loading import ModelStore, PipelineConfig, load_model, official
from trellis2_core.loading.comfy_detect import classify_file
from trellis2_core.loading.comfy_files import find_comfy_pipeline, list_comfy_pipelines
from trellis2_core.loading.comfy_int8 import QuantSpec, dequantize_int8, hadamard
from trellis2_core.loading.comfy_pipeline import KEY_ROLES, comfy_pipeline
from trellis2_core.loading.random_pipeline import write_random_pipeline
from trellis2_core.loading.safetensors_io import read_strict

ROLE_PREFIX = {"structure_model": "sparse_structure_flow_model", "img2shape_512": "shape_slat_flow_model_512",
               "img2shape": "shape_slat_flow_model_1024", "shape2txt": "tex_slat_flow_model_1024"}
SHAPE_VAE = {"struct_dec": "sparse_structure_decoder", "shape_dec": "shape_slat_decoder"}
TEX_VAE = {"txt_dec": "tex_slat_decoder"}
BLOCK_LINEARS = ("self_attn.to_qkv", "self_attn.to_out", "cross_attn.to_q", "cross_attn.to_kv", "cross_attn.to_out",
                 "mlp.mlp.0", "mlp.mlp.2")
TINY = {"specs": official.TINY, "dino_config": official.DINOV3_TINY}
SEED_ROWS = [[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]]


# ---------------------------------------------------------------------------------------------- file writers
def _official_tensors(official_dir: Path, key: str) -> dict[str, torch.Tensor]:
    return load_file(str(official_dir / f"{official.MODEL_REFS[key]}.safetensors"))


def _bf16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}


def bundle_tensors(official_dir: Path, prefix: str = "model.", roles=tuple(ROLE_PREFIX)) -> dict[str, torch.Tensor]:
    """Core's diffusion bundle: the four flows under ``prefix + role + '.'``, bf16."""
    out = {}
    for role in roles:
        tensors = _bf16(_official_tensors(official_dir, ROLE_PREFIX[role]))
        out.update({f"{prefix}{role}.{k}": v for k, v in tensors.items()})
    return out


def vae_tensors(official_dir: Path, table: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for role, key in table.items():
        out.update({f"{role}.{k}": v for k, v in _bf16(_official_tensors(official_dir, key)).items()})
    return out


def dino_tensors(official_dir: Path, naf: bool = True, folder: str = "dinov3") -> dict[str, torch.Tensor]:
    """Core's DINOv3 clip_vision file: the HF checkpoint in the 4.x key layout, plus ``naf.*`` tensors."""
    out = load_file(str(official_dir / folder / "model.safetensors"))
    out = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in out.items()}  # HF 4.x layout
    if naf:
        out["naf.image_encoder.encoder.0.weight"] = torch.randn(128, 3, 1, 1)
        out["naf.image_encoder.rope.periods"] = torch.randn(16)
    return out


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def write_core_dir(root: Path, official_dir: Path, *, bundle: dict[str, torch.Tensor] | None = None,
                   bundle_metadata: dict[str, str] | None = None, texture_vae: bool = True,
                   dino: bool = True) -> Path:
    """A ComfyUI ``models/`` folder with core's four TRELLIS.2 files (tiny)."""
    save(bundle if bundle is not None else bundle_tensors(official_dir),
         root / "diffusion_models" / "trellis_2_bf16.safetensors", bundle_metadata)
    save(vae_tensors(official_dir, SHAPE_VAE), root / "vae" / "trellis_2_shape_vae_bf16.safetensors")
    if texture_vae:
        save(vae_tensors(official_dir, TEX_VAE), root / "vae" / "trellis_2_texture_vae_bf16.safetensors")
    if dino:
        save(dino_tensors(official_dir), root / "clip_vision" / "dino_v3_L_naf_fp32.safetensors")
    return root


# ---------------------------------------------------------------------------------------------- int8 quantiser
def np_hadamard(g: int) -> np.ndarray:
    """Independent normalised regular Hadamard matrix: Kronecker power of the seed / √g (float64)."""
    seed = np.array(SEED_ROWS, dtype=np.float64)
    h = np.ones((1, 1))
    while h.shape[0] < g:
        h = np.kron(h, seed)
    assert h.shape == (g, g)
    return h / np.sqrt(g)


def np_quantize(w: np.ndarray, g: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Spec §4.2 offline quantisation: W_rot = W_grp·H_gᵀ (if g), s = max|W_rot|/127 per row, q = round/clamp."""
    w = w.astype(np.float64)
    out_f, in_f = w.shape
    rot = w if g is None else (w.reshape(out_f, in_f // g, g) @ np_hadamard(g).T).reshape(out_f, in_f)
    s = np.maximum(np.abs(rot).max(axis=1, keepdims=True) / 127.0, 1e-30)
    q = np.clip(np.round(rot / s), -128, 127).astype(np.int8)
    return q, s.astype(np.float32)


def np_dequantize(q: np.ndarray, s: np.ndarray, g: int | None) -> np.ndarray:
    """Spec §4.2 dequantisation, float64: (q·s) grouped · H_gᵀ."""
    w = q.astype(np.float64) * s.astype(np.float64).reshape(-1, 1)
    if g is None:
        return w
    out_f, in_f = w.shape
    return (w.reshape(out_f, in_f // g, g) @ np_hadamard(g).T).reshape(out_f, in_f)


def _quant_settings(layer: str, in_f: int) -> tuple[dict, int | None]:
    """The settings this test's quantiser uses per layer: convrot g=16 (g=4 under 'params' for to_kv), plain
    int8 rowwise where 16 does not divide the input width (the tiny mlp.mlp.2, 341)."""
    if layer.endswith("cross_attn.to_kv"):
        return {"format": "int8_tensorwise", "params": {"convrot": True, "convrot_groupsize": 4}}, 4
    if in_f % 16 == 0:
        return {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 16}, 16
    return {"format": "int8_tensorwise"}, None


def quantize_bundle(tensors: dict[str, torch.Tensor], originals: dict[str, torch.Tensor], *, in_header: bool
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, np.ndarray]]:
    """Quantise every block linear of a bundle like core's int8 file; returns (tensors, header metadata, the
    expected dequantised weights by full key)."""
    out = dict(tensors)
    layers_meta = {}
    expected = {}
    for key in list(tensors):
        layer = key[: -len(".weight")]
        if not (key.endswith(".weight") and any(layer.endswith(f".{name}") for name in BLOCK_LINEARS)):
            continue
        w = originals[key].float().numpy()
        settings, g = _quant_settings(layer, w.shape[1])
        q, s = np_quantize(w, g)
        out[key] = torch.from_numpy(q)
        out[f"{layer}.weight_scale"] = torch.from_numpy(s)  # [out, 1]
        if in_header:
            layers_meta[layer] = settings
        else:
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(settings).encode()), dtype=torch.uint8)
        expected[key] = np_dequantize(q, s, g)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers_meta})} if in_header \
        else {}
    return out, meta, expected


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    return write_random_pipeline(tmp_path_factory.mktemp("official") / "pipe", size="tiny", seed=3)


@pytest.fixture(scope="module")
def core_dir(tmp_path_factory, official_dir) -> Path:
    return write_core_dir(tmp_path_factory.mktemp("core") / "models", official_dir)


@pytest.fixture(scope="module")
def core(core_dir):
    return comfy_pipeline(core_dir, **TINY)


# ---------------------------------------------------------------------------------------------- detection
def test_classification_by_header_keys(core_dir, tmp_path, official_dir):
    kinds = {p.name: classify_file(p) for p in core_dir.rglob("*.safetensors")}
    assert kinds["trellis_2_bf16.safetensors"].kind == "diffusion bundle"
    assert kinds["trellis_2_bf16.safetensors"].roles == {r: f"model.{r}." for r in ROLE_PREFIX}
    assert kinds["trellis_2_shape_vae_bf16.safetensors"].kind == "shape VAE"
    assert kinds["trellis_2_texture_vae_bf16.safetensors"].kind == "texture VAE"
    dino = kinds["dino_v3_L_naf_fp32.safetensors"]
    assert dino.kind == "DINOv3" and dino.has_naf and dino.dino_shape == (32, 2, 16)
    # names do not matter: a texture VAE called like a bundle is still a texture VAE
    odd = shutil.copyfile(core_dir / "vae" / "trellis_2_texture_vae_bf16.safetensors",
                          tmp_path / "trellis_2_bf16.safetensors")
    assert classify_file(odd).kind == "texture VAE"
    junk = save({"foo.weight": torch.zeros(2)}, tmp_path / "junk.safetensors")
    assert classify_file(junk).kind == "unknown" and not classify_file(junk).usable


@pytest.mark.parametrize("prefix", ["model.", "model.diffusion_model.", ""])
def test_every_bundle_prefix_loads(tmp_path, official_dir, prefix):
    root = write_core_dir(tmp_path / "models", official_dir, bundle=bundle_tensors(official_dir, prefix))
    cp = comfy_pipeline(root, **TINY)
    assert cp.entries["shape_slat_flow_model_512"].prefix == f"{prefix}img2shape_512."
    flow = cp.load_model(cp.config, "shape_slat_flow_model_512")
    ref = load_model(official_dir, "shape_slat_flow_model_512")
    assert all(torch.equal(v, ref.state_dict()[k].to(torch.bfloat16).to(v.dtype)) for k, v in flow.state_dict().items())


def test_pixal3d_bundle_is_rejected(tmp_path, official_dir):
    tensors = bundle_tensors(official_dir)
    tensors["model.img2shape.blocks.0.cross_attn.proj_linear.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    root = write_core_dir(tmp_path / "models", official_dir, bundle=tensors)
    assert classify_file(root / "diffusion_models" / "trellis_2_bf16.safetensors").kind == "Pixal3D bundle"
    with pytest.raises(WeightsError, match=r"Pixal3D bundle is not usable.*no diffusion bundle") as err:
        comfy_pipeline(root, **TINY)
    assert "trellis_2_bf16.safetensors from Comfy-Org/TRELLIS.2" in str(err.value)


def test_texture_only_bundle_is_not_a_pipeline(tmp_path, official_dir):
    root = write_core_dir(tmp_path / "models", official_dir,
                          bundle=bundle_tensors(official_dir, roles=("shape2txt",)))
    assert classify_file(root / "diffusion_models" / "trellis_2_bf16.safetensors").kind == "texture-only bundle"
    with pytest.raises(WeightsError, match=r"texture-only bundle.*structure_model.*no diffusion bundle"):
        find_comfy_pipeline(root, dino_config=official.DINOV3_TINY)
    assert list_comfy_pipelines(root, dino_config=official.DINOV3_TINY) == []


def test_missing_texture_vae_says_what_to_download(tmp_path, official_dir):
    root = write_core_dir(tmp_path / "models", official_dir, texture_vae=False)
    with pytest.raises(WeightsError) as err:
        find_comfy_pipeline(root, dino_config=official.DINOV3_TINY)
    msg = str(err.value)
    assert f"no texture VAE found in {root / 'vae'}: download trellis_2_texture_vae_bf16.safetensors from " \
           "Comfy-Org/TRELLIS.2" in msg
    assert "shape VAE" not in msg and "diffusion bundle" not in msg


def test_dino_of_another_size_is_not_taken(core_dir):
    with pytest.raises(WeightsError, match=r"no DINOv3 ViT-L/16 .*other DINOv3 sizes found: dino_v3_L_naf_fp32"):
        find_comfy_pipeline(core_dir)  # default: the full-size ViT-L/16 config


def test_listing_finds_one_pipeline_per_bundle(tmp_path, official_dir):
    root = write_core_dir(tmp_path / "models", official_dir)
    quant, meta, _ = quantize_bundle(bundle_tensors(official_dir), bundle_tensors(official_dir), in_header=False)
    save(quant, root / "unet" / "sub" / "my_int8.safetensors", meta)
    (root / "vae" / "notes.txt").write_text("not a model")
    (root / "vae" / "broken.safetensors").write_bytes(b"\x00" * 5)
    found = list_comfy_pipelines(root, dino_config=official.DINOV3_TINY)
    assert [s.name for s in found] == ["comfy:sub/my_int8", "comfy:trellis_2_bf16"]
    assert [s.bundle.quantised for s in found] == [True, False]
    assert found[1].files == {
        "diffusion_models": root / "diffusion_models" / "trellis_2_bf16.safetensors",
        "shape_vae": root / "vae" / "trellis_2_shape_vae_bf16.safetensors",
        "texture_vae": root / "vae" / "trellis_2_texture_vae_bf16.safetensors",
        "clip_vision": root / "clip_vision" / "dino_v3_L_naf_fp32.safetensors"}
    folders = {"diffusion_models": [root / "unet"], "vae": [root / "vae"], "clip_vision": [root / "clip_vision"]}
    assert [s.name for s in list_comfy_pipelines(folders=folders, dino_config=official.DINOV3_TINY)] == \
        ["comfy:sub/my_int8"]
    with pytest.raises(WeightsError, match="several diffusion bundles"):
        find_comfy_pipeline(root, dino_config=official.DINOV3_TINY)
    assert find_comfy_pipeline(root, name="comfy:sub/my_int8", dino_config=official.DINOV3_TINY).bundle.path.name == \
        "my_int8.safetensors"
    assert list_comfy_pipelines(tmp_path / "empty") == []
    files = [*sorted((root / "vae").glob("trellis*")), root / "clip_vision" / "dino_v3_L_naf_fp32.safetensors",
             root / "diffusion_models" / "trellis_2_bf16.safetensors"]
    assert comfy_pipeline(files, **TINY).name == "comfy:trellis_2_bf16"


# ---------------------------------------------------------------------------------------------- description
def test_config_stands_in_for_pipeline_json(core):
    cfg = core.config
    ref = PipelineConfig.from_dict(official.pipeline_json(), root=Path("."))
    assert cfg.samplers == ref.samplers and cfg.normalizations == ref.normalizations
    assert cfg.default_pipeline_type == "1024_cascade"
    assert set(cfg.models) == set(KEY_ROLES) and "tex_slat_flow_model_512" not in cfg.models
    assert cfg.models["tex_slat_decoder"].endswith("trellis_2_texture_vae_bf16.safetensors::txt_dec.")
    assert core.entries["sparse_structure_decoder"].prefix == "struct_dec."
    assert core.entries["tex_slat_flow_model_1024"].class_name == "ElasticSLatFlowModel"
    inferred = comfy_pipeline(core.files)  # default: the size whose width the bundle has (here tiny)
    assert inferred.entries["shape_slat_flow_model_1024"].args == official.TINY["shape_slat_flow_model_1024"][1]
    full = comfy_pipeline(core.files, specs=official.FULL, dino_config=official.DINOV3_FULL)
    assert full.entries["shape_slat_flow_model_1024"].args == official.FULL["shape_slat_flow_model_1024"][1]


def test_the_user_is_told_the_files_are_not_the_official_bytes(core, caplog):
    with caplog.at_level("WARNING", logger="trellis2_core.loading.comfy_pipeline"):
        comfy_pipeline(core.files, **TINY)
    assert "comfy:trellis_2_bf16: ComfyUI core's TRELLIS.2 files are bf16 re-encodings" in caplog.text
    assert "int8" not in caplog.text


def test_pipeline_type_512_is_refused(core):
    with pytest.raises(WeightsError, match=r"'512' needs tex_slat_flow_model_512.*'1024_cascade'"):
        core.check_pipeline_type("512")
    with pytest.raises(WeightsError, match="tex_slat_flow_model_512"):
        core.load_model(core.config, "tex_slat_flow_model_512")
    for name in ("1024", "1024_cascade", "1536_cascade"):
        core.check_pipeline_type(name)


# ---------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("key", sorted(KEY_ROLES))
def test_core_files_load_like_the_official_layout(core, official_dir, key):
    store = ModelStore(core.config, loader=core.load_model)
    ours = store.get(key)
    ref = load_model(official_dir, key)
    assert not ours.training and all(not p.requires_grad for p in ours.parameters())
    sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(sd) == set(ref_sd)
    for k, v in sd.items():
        assert v.dtype == ref_sd[k].dtype and not v.is_meta, k
        assert torch.equal(v, ref_sd[k].to(torch.bfloat16).to(v.dtype)), k


def test_dtype_override_applies(core):
    flow = core.load_model(core.config, "shape_slat_flow_model_1024", dtype_override=torch.bfloat16)
    dtypes = {k: v.dtype for k, v in flow.state_dict().items()}
    assert dtypes["blocks.0.self_attn.to_qkv.weight"] == torch.bfloat16
    assert dtypes["t_embedder.mlp.0.weight"] == torch.float32


def test_rope_phases_in_the_file_are_dropped(tmp_path, official_dir):
    tensors = bundle_tensors(official_dir)
    tensors["model.structure_model.rope_phases"] = torch.zeros(8, 4, 2, 2)
    root = write_core_dir(tmp_path / "models", official_dir, bundle=tensors)
    model = comfy_pipeline(root, **TINY).load_model(None, "sparse_structure_flow_model")
    assert "rope_phases" not in model.state_dict()


def _one_bundle_pipeline(tmp_path, official_dir, tensors, metadata=None):
    root = write_core_dir(tmp_path / "models", official_dir, bundle=tensors, bundle_metadata=metadata)
    return comfy_pipeline(root, **TINY)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, official_dir):
    tensors = bundle_tensors(official_dir)
    del tensors["model.img2shape.blocks.1.norm2.weight"]
    tensors["model.img2shape.blocks.0.bogus"] = torch.zeros(3, dtype=torch.bfloat16)
    tensors["model.img2shape.out_layer.bias"] = torch.zeros(31, dtype=torch.bfloat16)
    cp = _one_bundle_pipeline(tmp_path, official_dir, tensors)
    with pytest.raises(WeightsError) as err:
        cp.load_model(None, "shape_slat_flow_model_1024")
    msg = str(err.value)
    assert "trellis_2_bf16.safetensors (tensors under 'model.img2shape.')" in msg
    assert "1 missing keys: blocks.1.norm2.weight" in msg and "1 unexpected keys: blocks.0.bogus" in msg
    assert "out_layer.bias: expected [32], found [31]" in msg
    assert isinstance(cp.load_model(None, "shape_slat_flow_model_512"), torch.nn.Module)  # its neighbour is fine


def test_a_prefix_matching_nothing_is_an_error(core, tmp_path):
    path = core.entries["tex_slat_decoder"].file
    with pytest.raises(WeightsError, match=r"no tensors under the prefix 'shape_dec\.'"):
        read_strict(path, {"x": torch.empty(1, device="meta")}, prefix="shape_dec.")
    with pytest.raises(WeightsError, match="unexpected keys: txt_dec"):  # no prefix: every key is the model's
        read_strict(path, {})


def test_dino_from_a_clip_vision_file(core, official_dir):
    from PIL import Image

    from trellis2_core.models.dinov3 import DinoV3FeatureExtractor

    ours = core.load_image_cond_model()
    ref = DinoV3FeatureExtractor.from_folder(official_dir / "dinov3")
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    assert torch.equal(ours.features(img, 64), ref.features(img, 64))


def test_dino_file_with_a_stray_key_is_rejected(tmp_path, official_dir):
    root = write_core_dir(tmp_path / "models", official_dir)
    tensors = dino_tensors(official_dir)
    tensors["layer.0.attention.k_proj.bias"] = torch.zeros(32)
    save(tensors, root / "clip_vision" / "dino_v3_L_naf_fp32.safetensors")
    with pytest.raises(WeightsError, match=r"1 unexpected keys \(layer\.0\.attention\.k_proj\.bias\)"):
        comfy_pipeline(root, **TINY).load_image_cond_model()


# ---------------------------------------------------------------------------------------------- int8
def test_hadamard_and_dequantisation_match_an_independent_numpy_version():
    g = 256
    assert np.allclose(hadamard(g).double().numpy(), np_hadamard(g), atol=1e-7)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    q, s = np_quantize(w, g)
    ours = dequantize_int8(torch.from_numpy(q), torch.from_numpy(s), QuantSpec("int8_tensorwise", True, g),
                           layer="l", where="test").numpy()
    expect = np_dequantize(q, s, g)
    assert np.abs(ours - expect).max() <= 1e-6 * np.abs(expect).max()
    rel = np.linalg.norm(ours - w) / np.linalg.norm(w)
    assert 1e-4 < rel < 0.02  # quantisation error: present, and small
    plain = dequantize_int8(torch.from_numpy(q), torch.from_numpy(s.reshape(-1)), QuantSpec("int8_tensorwise"),
                            layer="l", where="test").numpy()
    assert np.array_equal(plain, (q.astype(np.float32) * s))  # without convrot: q·s per row


@pytest.mark.parametrize("in_header", [False, True], ids=["comfy_quant-tensors", "header-metadata"])
def test_int8_bundle_is_dequantised_at_load(tmp_path, official_dir, in_header):
    originals = {f"model.{r}.{k}": v for r in ROLE_PREFIX
                 for k, v in _official_tensors(official_dir, ROLE_PREFIX[r]).items()}
    tensors, meta, expected = quantize_bundle(bundle_tensors(official_dir), originals, in_header=in_header)
    assert len(expected) == 4 * 2 * len(BLOCK_LINEARS)
    cp = _one_bundle_pipeline(tmp_path, official_dir, tensors, meta)
    assert cp.files.bundle.quantised
    for key, role in KEY_ROLES.items():
        if role not in ROLE_PREFIX:
            continue
        sd = cp.load_model(None, key).state_dict()
        ref = load_model(official_dir, key).state_dict()
        for name, v in sd.items():
            full = f"model.{role}.{name}"
            if full in expected:
                want = expected[full]
                assert np.abs(v.double().numpy() - want).max() <= 1e-6 * np.abs(want).max(), full
                orig = ref[name].double().numpy()
                assert np.linalg.norm(v.double().numpy() - orig) / np.linalg.norm(orig) < 0.03, full
            else:
                assert torch.equal(v, ref[name].to(torch.bfloat16).to(v.dtype)), full


def _quantised_layer_bundle(official_dir, settings):
    tensors = bundle_tensors(official_dir)
    layer = "model.img2shape.blocks.0.self_attn.to_out"
    w = tensors[f"{layer}.weight"].float().numpy()
    q, s = np_quantize(w, 16)
    tensors[f"{layer}.weight"] = torch.from_numpy(q)
    tensors[f"{layer}.weight_scale"] = torch.from_numpy(s)
    tensors[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(settings).encode()), dtype=torch.uint8)
    return tensors


@pytest.mark.parametrize("settings,match", [
    ({"format": "float8_e4m3fn"}, r"blocks\.0\.self_attn\.to_out uses the quantisation format 'float8_e4m3fn'"),
    ({"format": "convrot_w4a4"}, "'convrot_w4a4', which this loader cannot dequantise"),
    ({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 8}, "must be a power of 4"),
    ({"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 256}, "not a multiple of the convrot group"),
])
def test_bad_quantisation_is_refused(tmp_path, official_dir, settings, match):
    cp = _one_bundle_pipeline(tmp_path, official_dir, _quantised_layer_bundle(official_dir, settings))
    with pytest.raises(WeightsError, match=match):
        cp.load_model(None, "shape_slat_flow_model_1024")


def test_quantised_layer_without_its_scale_is_refused(tmp_path, official_dir):
    tensors = _quantised_layer_bundle(official_dir, {"format": "int8_tensorwise", "convrot": True,
                                                     "convrot_groupsize": 16})
    del tensors["model.img2shape.blocks.0.self_attn.to_out.weight_scale"]
    cp = _one_bundle_pipeline(tmp_path, official_dir, tensors)
    with pytest.raises(WeightsError, match=r"to_out has no blocks\.0\.self_attn\.to_out\.weight_scale"):
        cp.load_model(None, "shape_slat_flow_model_1024")


# ---------------------------------------------------------------------------------------------- real core classes
_DUMP = r"""
import json, sys
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.ops
from comfy.ldm.trellis2.model import Trellis2
from comfy.ldm.trellis2.vae import ShapeVae, TextureVae
from comfy.image_encoders.dino3 import DINOv3ViTModel
ops = comfy.ops.disable_weight_init
cfg = json.load(open("comfy/image_encoders/dino3_large.json"))
with torch.device("meta"):
    models = {"bundle": Trellis2(64, init_txt_model=True, operations=ops, device="meta", dtype=torch.bfloat16),
              "shape_vae": ShapeVae(), "texture_vae": TextureVae(),
              "dino": DINOv3ViTModel(cfg, torch.float32, "meta", ops)}
print(json.dumps({name: {k: list(v.shape) for k, v in m.state_dict().items()} for name, m in models.items()}))
"""


@pytest.fixture(scope="module")
def core_shapes() -> dict[str, dict[str, list[int]]]:
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout (COMFYUI_PYTHON or a venv beside it: its python) to "
                    "compare with core's own TRELLIS.2 model classes")
    from tests.comfyui.server import comfy_python

    python = comfy_python(Path(comfy_dir))
    run = subprocess.run([python, "-c", _DUMP], cwd=comfy_dir, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _ours_full(key: str) -> dict[str, list[int]]:
    from trellis2_core.models import model_class

    cls_name, args = official.FULL[key]
    with torch.device("meta"):
        model = model_class(cls_name)(**args)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("key", sorted(KEY_ROLES))
def test_full_size_keys_and_shapes_equal_cores_classes(core_shapes, key):
    role = KEY_ROLES[key]
    source = "bundle" if role in ROLE_PREFIX else ("shape_vae" if role in SHAPE_VAE else "texture_vae")
    theirs = {k[len(role) + 1:]: v for k, v in core_shapes[source].items() if k.startswith(f"{role}.")}
    ours = _ours_full(key)
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


def test_full_size_dino_keys_equal_cores_class(core_shapes):
    from trellis2_core.models.dinov3 import _transformers

    tf = _transformers()
    cfg = {k: v for k, v in official.DINOV3_FULL.items() if k not in ("torch_dtype", "architectures")}
    with torch.device("meta"):
        vit = tf.DINOv3ViTModel(tf.DINOv3ViTConfig.from_dict(cfg))
    ours = {(k[len("model."):] if k.startswith("model.") else k): list(v.shape) for k, v in vit.state_dict().items()}
    assert ours == core_shapes["dino"]


# ---------------------------------------------------------------------------------------------- whole pipeline
def test_golden_1024_pipeline_runs_from_core_layout_files(tmp_path, golden_dir):
    """The tiny golden pipeline's weights repacked in core's layout (kept float32, so the bytes are the same) run
    through ``ModelStore(loader=...)`` and reproduce the official golden outputs."""
    from trellis2_core.pipeline.pipeline import Pipeline
    from trellis2_core.pipeline.stages import Conditioning

    meta = json.loads((golden_dir / "pipeline_1024.json").read_text())
    gold = load_file(str(golden_dir / "pipeline_1024.safetensors"))
    pdir = golden_dir / meta["params"]["pipeline_dir"]
    root = tmp_path / "models"
    bundle = {f"model.{role}.{k}": v for role, key in ROLE_PREFIX.items()
              for k, v in _official_tensors(pdir, key).items()}
    save(bundle, root / "diffusion_models" / "bundle.safetensors")
    for name, table in (("shape", SHAPE_VAE), ("texture", TEX_VAE)):
        save({f"{role}.{k}": v for role, key in table.items() for k, v in _official_tensors(pdir, key).items()},
             root / "vae" / f"{name}.safetensors")
    save(dino_tensors(pdir, folder="dinov3-tiny"), root / "clip_vision" / "dino.safetensors")
    cp = comfy_pipeline(root, **TINY)
    res = Pipeline(cp.config, cp.model_store()).run_from_conditioning(
        Conditioning(gold["cond_512"], gold["cond_1024"]), seed=meta["params"]["seed"],
        pipeline_type=meta["params"]["pipeline_type"])
    for name, got in (("output.shape_slat.feats", res.shape.slat.feats),
                      ("output.tex_slat.feats", res.material.slat.feats)):
        tol = meta["tolerance"][name]
        torch.testing.assert_close(got, gold[name], atol=tol["atol"], rtol=tol["rtol"])
    assert torch.equal(res.shape.slat.coords, gold["output.shape_slat.coords"])
    assert torch.equal(res.decoded.meshes[0].faces.to(torch.int32), gold["output.mesh.faces"])
