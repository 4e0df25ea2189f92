"""The official TRELLIS.2-4B pipeline description as data (spec §1.4, §3, §4.1, §5, Appendix B).

What ``pipeline.json`` and the ``ckpts/*.json`` files of ``microsoft/TRELLIS.2-4B`` say: model references, sampler
blocks, latent normalisation, the conditioner and matting model names, and every model's class and constructor
arguments at full size. ``TINY`` holds the same architectures at test widths (those of the tiny golden pipeline).
Used to write pipeline folders in the official layout (:mod:`.random_pipeline`) and wherever a checkpoint file
comes without its description.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from ..errors import InputError

__all__ = ["MODEL_REFS", "SAMPLERS", "NORMALIZATIONS", "DINOV3_FULL", "DINOV3_TINY", "FULL", "TINY",
           "pipeline_json", "model_specs", "ENCODER_KEY", "ENCODER_REF", "TEXTURING_MODEL_KEYS", "ENCODER_FULL",
           "ENCODER_TINY", "encoder_spec", "texturing_pipeline_json", "TEXTURING_PIPELINE_JSON"]

# pipeline.json args.models (§4.1); the SS decoder is TRELLIS v1's, stored beside the others here
MODEL_REFS: dict[str, str] = {
    "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_1_3B_64_bf16",
    "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
    "shape_slat_flow_model_512": "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
    "shape_slat_flow_model_1024": "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
    "shape_slat_decoder": "ckpts/shape_dec_next_dc_f16c32_fp16",
    "tex_slat_flow_model_512": "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
    "tex_slat_flow_model_1024": "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    "tex_slat_decoder": "ckpts/tex_dec_next_dc_f16c32_fp16",
}


def _sampler(steps: int, strength: float, rescale: float, interval: tuple[float, float], rescale_t: float) -> dict:
    return {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05},
            "params": {"steps": steps, "guidance_strength": strength, "guidance_rescale": rescale,
                       "guidance_interval": list(interval), "rescale_t": rescale_t}}


# §1.4: the sampler blocks of pipeline.json
SAMPLERS: dict[str, dict[str, Any]] = {
    "sparse_structure_sampler": _sampler(12, 7.5, 0.7, (0.6, 1.0), 5.0),
    "shape_slat_sampler": _sampler(12, 7.5, 0.5, (0.6, 1.0), 3.0),
    "tex_slat_sampler": _sampler(12, 1.0, 0.0, (0.6, 0.9), 3.0),
}

# Appendix B
NORMALIZATIONS: dict[str, dict[str, list[float]]] = {
    "shape_slat_normalization": {
        "mean": [0.781296, 0.018091, -0.495192, -0.558457, 1.060530, 0.093252, 1.518149, -0.933218,
                 -0.732996, 2.604095, -0.118341, -2.143904, 0.495076, -2.179512, -2.130751, -0.996944,
                 0.261421, -2.217463, 1.260067, -0.150213, 3.790713, 1.481266, -1.046058, -1.523667,
                 -0.059621, 2.220780, 1.621212, 0.877230, 0.567247, -3.175944, -3.186688, 1.578665],
        "std": [5.972266, 4.706852, 5.445010, 5.209927, 5.320220, 4.547237, 5.020802, 5.444004,
                5.226681, 5.683095, 4.831436, 5.286469, 5.652043, 5.367606, 5.525084, 4.730578,
                4.805265, 5.124013, 5.530808, 5.619001, 5.103930, 5.417670, 5.269677, 5.547194,
                5.634698, 5.235274, 6.110351, 5.511298, 6.237273, 4.879207, 5.347008, 5.405691],
    },
    "tex_slat_normalization": {
        "mean": [3.501659, 2.212398, 2.226094, 0.251093, -0.026248, -0.687364, 0.439898, -0.928075,
                 0.029398, -0.339596, -0.869527, 1.038479, -0.972385, 0.126042, -1.129303, 0.455149,
                 -1.209521, 2.069067, 0.544735, 2.569128, -0.323407, 2.293000, -1.925608, -1.217717,
                 1.213905, 0.971588, -0.023631, 0.106750, 2.021786, 0.250524, -0.662387, -0.768862],
        "std": [2.665652, 2.743913, 2.765121, 2.595319, 3.037293, 2.291316, 2.144656, 2.911822,
                2.969419, 2.501689, 2.154811, 3.163343, 2.621215, 2.381943, 3.186697, 3.021588,
                2.295916, 3.234985, 3.233086, 2.260140, 2.874801, 2.810596, 3.292720, 2.674999,
                2.680878, 2.372054, 2.451546, 2.353556, 2.995195, 2.379849, 2.786195, 2.775190],
    },
}

# §3: the DINOv3 ViT-L/16 config (HF config.json fields) and the tiny one of the golden pipeline
DINOV3_FULL: dict[str, Any] = {
    "architectures": ["DINOv3ViTModel"], "model_type": "dinov3_vit", "hidden_size": 1024, "num_hidden_layers": 24,
    "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu", "num_register_tokens": 4,
    "patch_size": 16, "num_channels": 3, "image_size": 224, "rope_theta": 100.0, "layer_norm_eps": 1e-5,
    "layerscale_value": 1.0, "query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True,
    "mlp_bias": True, "use_gated_mlp": False, "pos_embed_shift": None, "pos_embed_jitter": None,
    "pos_embed_rescale": 2.0, "attention_dropout": 0.0, "drop_path_rate": 0.0, "initializer_range": 0.02,
    "torch_dtype": "float32",
}
DINOV3_TINY: dict[str, Any] = {**DINOV3_FULL, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": 64}

# §4.1 DiT hyper-parameters, shared by the five flow models
_DIT = {"model_channels": 1536, "cond_channels": 1024, "num_blocks": 30, "num_heads": 12, "mlp_ratio": 5.3334,
        "pe_mode": "rope", "share_mod": True, "initialization": "scaled", "qk_rms_norm": True,
        "qk_rms_norm_cross": True, "dtype": "bfloat16"}
_FLOWS = {  # key -> (class, per-model args)
    "sparse_structure_flow_model": ("SparseStructureFlowModel", {"resolution": 16, "in_channels": 8,
                                                                 "out_channels": 8}),
    "shape_slat_flow_model_512": ("ElasticSLatFlowModel", {"resolution": 32, "in_channels": 32, "out_channels": 32}),
    "shape_slat_flow_model_1024": ("ElasticSLatFlowModel", {"resolution": 64, "in_channels": 32, "out_channels": 32}),
    "tex_slat_flow_model_512": ("ElasticSLatFlowModel", {"resolution": 32, "in_channels": 64, "out_channels": 32}),
    "tex_slat_flow_model_1024": ("ElasticSLatFlowModel", {"resolution": 64, "in_channels": 64, "out_channels": 32}),
}
# §5: the sparse-conv VAE decoders and TRELLIS v1's structure decoder
_SC = {"model_channels": [1024, 512, 256, 128, 64], "latent_channels": 32, "num_blocks": [4, 16, 8, 4, 0],
       "block_type": ["SparseConvNeXtBlock3d"] * 5, "up_block_type": ["SparseResBlockC2S3d"] * 4,
       "block_args": [{}] * 5, "use_fp16": True}
_SS_DEC = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
           "channels": [512, 128, 32], "norm_type": "layer", "use_fp16": True}


def _specs(dit: Mapping[str, Any], sc: Mapping[str, Any], ss_dec: Mapping[str, Any]) -> dict[str, tuple[str, dict]]:
    out = {key: (cls, {**per, **dit}) for key, (cls, per) in _FLOWS.items()}
    out["sparse_structure_decoder"] = ("SparseStructureDecoder", dict(ss_dec))
    out["shape_slat_decoder"] = ("FlexiDualGridVaeDecoder", {"resolution": 256, **sc})
    out["tex_slat_decoder"] = ("SparseUnetVaeDecoder", {"out_channels": 6, "pred_subdiv": False, **sc})
    return out


#: pipeline model key -> (official class name, constructor args), full size
FULL: dict[str, tuple[str, dict[str, Any]]] = _specs(_DIT, _SC, _SS_DEC)
#: the same at the widths of the tiny golden pipeline, all float32 (CPU tests, the ``demo`` pipeline)
TINY: dict[str, tuple[str, dict[str, Any]]] = _specs(
    {**_DIT, "model_channels": 64, "cond_channels": 32, "num_blocks": 2, "num_heads": 2, "dtype": "float32"},
    {**_SC, "model_channels": [64, 32, 16, 16, 8], "num_blocks": [1, 1, 1, 1, 0], "use_fp16": False},
    {**_SS_DEC, "num_res_blocks": 1, "num_res_blocks_middle": 1, "channels": [32, 16, 8], "use_fp16": False},
)


def model_specs(size: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """A deep copy of :data:`FULL` (``size='full'``) or :data:`TINY` (``'tiny'``)."""
    if size not in ("full", "tiny"):
        raise InputError(f"size must be 'full' or 'tiny', got {size!r}")
    return copy.deepcopy(FULL if size == "full" else TINY)


def pipeline_json(*, image_cond_model: str = "facebook/dinov3-vitl16-pretrain-lvd1689m",
                  rembg_model: str = "briaai/RMBG-2.0", default_pipeline_type: str = "1024_cascade") -> dict:
    """The official ``pipeline.json`` content; the conditioner and matting model names can be replaced."""
    return {"name": "Trellis2ImageTo3DPipeline", "args": {
        "models": dict(MODEL_REFS), **copy.deepcopy(SAMPLERS), **copy.deepcopy(NORMALIZATIONS),
        "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": image_cond_model}},
        "rembg_model": {"name": "BiRefNet", "args": {"model_name": rembg_model}},
        "default_pipeline_type": default_pipeline_type,
    }}


# §11: the texturing pipeline (``texturing_pipeline.json``): the shape encoder plus three models of the image pipeline
TEXTURING_PIPELINE_JSON = "texturing_pipeline.json"
ENCODER_KEY = "shape_slat_encoder"
ENCODER_REF = "ckpts/shape_enc_next_dc_f16c32_fp16"
TEXTURING_MODEL_KEYS: tuple[str, ...] = (ENCODER_KEY, "tex_slat_decoder", "tex_slat_flow_model_512",
                                         "tex_slat_flow_model_1024")
_ENC = {"model_channels": [64, 128, 256, 512, 1024], "latent_channels": 32, "num_blocks": [0, 4, 8, 16, 4],
        "block_type": ["SparseConvNeXtBlock3d"] * 5, "down_block_type": ["SparseResBlockS2C3d"] * 4,
        "block_args": [{}] * 5, "use_fp16": True}
#: (class name, args) of the shape encoder (§5.3), full size and at the tiny golden widths
ENCODER_FULL: tuple[str, dict[str, Any]] = ("FlexiDualGridVaeEncoder", _ENC)
ENCODER_TINY: tuple[str, dict[str, Any]] = ("FlexiDualGridVaeEncoder", {
    **_ENC, "model_channels": [8, 16, 16, 32, 64], "num_blocks": [0, 1, 1, 1, 1], "use_fp16": False})


def encoder_spec(size: str) -> tuple[str, dict[str, Any]]:
    """A deep copy of :data:`ENCODER_FULL` (``size='full'``) or :data:`ENCODER_TINY` (``'tiny'``)."""
    if size not in ("full", "tiny"):
        raise InputError(f"size must be 'full' or 'tiny', got {size!r}")
    return copy.deepcopy(ENCODER_FULL if size == "full" else ENCODER_TINY)


def texturing_pipeline_json(*, image_cond_model: str = "facebook/dinov3-vitl16-pretrain-lvd1689m",
                            rembg_model: str = "briaai/RMBG-2.0") -> dict:
    """The official ``texturing_pipeline.json`` content (``Trellis2TexturingPipeline``; no ``low_vram`` key)."""
    refs = {**MODEL_REFS, ENCODER_KEY: ENCODER_REF}
    return {"name": "Trellis2TexturingPipeline", "args": {
        "models": {key: refs[key] for key in TEXTURING_MODEL_KEYS},
        "tex_slat_sampler": copy.deepcopy(SAMPLERS["tex_slat_sampler"]), **copy.deepcopy(NORMALIZATIONS),
        "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": image_cond_model}},
        "rembg_model": {"name": "BiRefNet", "args": {"model_name": rembg_model}},
    }}
