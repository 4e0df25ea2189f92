"""Full-size official DiT configs built on meta: parameter counts, keys, shapes, dtype policy (§4.1, §4.7)."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.models import model_class

_COMMON = dict(model_channels=1536, cond_channels=1024, num_blocks=30, num_heads=12, mlp_ratio=5.3334,
               pe_mode="rope", share_mod=True, initialization="scaled", qk_rms_norm=True, qk_rms_norm_cross=True,
               dtype="bfloat16")
CONFIGS = {
    "ss_flow": ("SparseStructureFlowModel", dict(resolution=16, in_channels=8, out_channels=8), 1_292_179_976),
    "shape_flow": ("ElasticSLatFlowModel", dict(resolution=64, in_channels=32, out_channels=32), 1_292_253_728),
    "tex_flow": ("ElasticSLatFlowModel", dict(resolution=64, in_channels=64, out_channels=32), 1_292_302_880),
}
BF16_PARAMS = 1_274_680_320  # §4.1: block linears

# §4.7: one block's keys and shapes
BLOCK_KEYS = {
    "modulation": [9216], "norm2.weight": [1536], "norm2.bias": [1536],
    "self_attn.to_qkv.weight": [4608, 1536], "self_attn.to_qkv.bias": [4608],
    "self_attn.q_rms_norm.gamma": [12, 128], "self_attn.k_rms_norm.gamma": [12, 128],
    "self_attn.to_out.weight": [1536, 1536], "self_attn.to_out.bias": [1536],
    "cross_attn.to_q.weight": [1536, 1536], "cross_attn.to_q.bias": [1536],
    "cross_attn.to_kv.weight": [3072, 1024], "cross_attn.to_kv.bias": [3072],
    "cross_attn.q_rms_norm.gamma": [12, 128], "cross_attn.k_rms_norm.gamma": [12, 128],
    "cross_attn.to_out.weight": [1536, 1536], "cross_attn.to_out.bias": [1536],
    "mlp.mlp.0.weight": [8192, 1536], "mlp.mlp.0.bias": [8192],
    "mlp.mlp.2.weight": [1536, 8192], "mlp.mlp.2.bias": [1536],
}
BF16_SUFFIXES = ("to_qkv.weight", "to_qkv.bias", "self_attn.to_out.weight", "self_attn.to_out.bias", "to_q.weight",
                 "to_q.bias", "to_kv.weight", "to_kv.bias", "cross_attn.to_out.weight", "cross_attn.to_out.bias",
                 "mlp.mlp.0.weight", "mlp.mlp.0.bias", "mlp.mlp.2.weight", "mlp.mlp.2.bias")


def _build(name: str) -> torch.nn.Module:
    cls_name, args, _ = CONFIGS[name]
    with torch.device("meta"):
        return model_class(cls_name)(**_COMMON, **args)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_size_parameter_count_keys_and_dtypes(name):
    model = _build(name)
    _, args, count = CONFIGS[name]
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == count
    assert len(sd) == 640
    top = {"t_embedder.mlp.0.weight": [1536, 256], "t_embedder.mlp.0.bias": [1536],
           "t_embedder.mlp.2.weight": [1536, 1536], "t_embedder.mlp.2.bias": [1536],
           "adaLN_modulation.1.weight": [9216, 1536], "adaLN_modulation.1.bias": [9216],
           "input_layer.weight": [1536, args["in_channels"]], "input_layer.bias": [1536],
           "out_layer.weight": [args["out_channels"], 1536], "out_layer.bias": [args["out_channels"]]}
    expected = dict(top)
    for n in range(30):
        expected.update({f"blocks.{n}.{k}": v for k, v in BLOCK_KEYS.items()})
    assert {k: list(v.shape) for k, v in sd.items()} == expected
    for key, value in sd.items():
        low = key.startswith("blocks.") and key.endswith(BF16_SUFFIXES)
        assert value.dtype == (torch.bfloat16 if low else torch.float32), key
    assert sum(v.numel() for v in sd.values() if v.dtype == torch.bfloat16) == BF16_PARAMS


def test_full_size_strict_meta_load_applies_policy_and_drops_rope_phases():
    model = _build("ss_flow")
    with torch.device("meta"):
        sd = {k: torch.empty(v.shape, dtype=torch.bfloat16) for k, v in model.state_dict().items()}
        sd["rope_phases"] = torch.empty(4096, 64, dtype=torch.complex64)
    model.load_state_dict(sd, strict=True, assign=True)
    assert model.t_embedder.mlp[0].weight.dtype == torch.float32  # cast back to the policy dtype
    assert model.blocks[3].mlp.mlp[0].weight.dtype == torch.bfloat16
    assert model.trunk_dtype == torch.bfloat16


def test_use_fp16_selects_float16_trunk():
    args = dict(_COMMON, num_blocks=1, resolution=16, in_channels=8, out_channels=8)
    del args["dtype"]
    with torch.device("meta"):
        model = model_class("SparseStructureFlowModel")(**args, use_fp16=True)
    assert model.trunk_dtype == torch.float16
    assert model.blocks[0].modulation.dtype == torch.float32
