"""Full-size decoder architectures on the meta device (spec §5.1, §5.2): parameter counts, keys, shapes, dtypes."""
from __future__ import annotations

import torch

from trellis2_core.models import model_class

_UNET = dict(model_channels=[1024, 512, 256, 128, 64], latent_channels=32, num_blocks=[4, 16, 8, 4, 0],
             block_type=["SparseConvNeXtBlock3d"] * 5, up_block_type=["SparseResBlockC2S3d"] * 4,
             block_args=[{"use_checkpoint": False}] * 5, use_fp16=True)


def _build(name: str, **args) -> torch.nn.Module:
    with torch.device("meta"):
        return model_class(name)(**args)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sparse_structure_decoder_full_size():
    m = _build("SparseStructureDecoder", out_channels=1, latent_channels=8, num_res_blocks=2, num_res_blocks_middle=2,
               channels=[512, 128, 32], norm_type="layer", use_fp16=True)
    sd = m.state_dict()
    assert _count(m) == 73_671_201 and len(sd) == 74
    assert sd["input_layer.weight"].shape == (512, 8, 3, 3, 3) and sd["input_layer.weight"].dtype == torch.float32
    assert sd["middle_block.1.conv2.weight"].shape == (512, 512, 3, 3, 3)
    assert sd["middle_block.1.conv2.weight"].dtype == torch.float16
    assert sd["blocks.2.conv.weight"].shape == (1024, 512, 3, 3, 3)
    assert sd["blocks.5.conv.weight"].shape == (256, 128, 3, 3, 3)
    assert sd["blocks.7.norm2.bias"].shape == (32,) and sd["blocks.7.norm2.bias"].dtype == torch.float32
    assert sd["out_layer.0.weight"].shape == (32,)
    assert sd["out_layer.2.weight"].shape == (1, 32, 3, 3, 3) and sd["out_layer.2.bias"].dtype == torch.float32
    assert not any(k.startswith(("blocks.8", "middle_block.2")) for k in sd)


def _check_unet_keys(sd: dict, out: int, subdiv: bool) -> None:
    widths = [1024, 512, 256, 128, 64]
    last = {0: 4, 1: 16, 2: 8, 3: 4}
    assert sd["from_latent.weight"].shape == (1024, 32) and sd["from_latent.weight"].dtype == torch.float32
    assert sd["output_layer.weight"].shape == (out, 64) and sd["output_layer.bias"].dtype == torch.float32
    for i, c in enumerate(widths[:4]):
        co = widths[i + 1]
        for j in range(last[i]):
            assert sd[f"blocks.{i}.{j}.conv.weight"].shape == (c, 3, 3, 3, c)
            assert sd[f"blocks.{i}.{j}.conv.weight"].dtype == torch.float16
            assert sd[f"blocks.{i}.{j}.norm.weight"].dtype == torch.float32
            assert sd[f"blocks.{i}.{j}.mlp.0.weight"].shape == (4 * c, c)
            assert sd[f"blocks.{i}.{j}.mlp.2.weight"].shape == (c, 4 * c)
            assert sd[f"blocks.{i}.{j}.mlp.2.weight"].dtype == torch.float16
        up = f"blocks.{i}.{last[i]}"
        assert sd[f"{up}.norm1.weight"].shape == (c,) and sd[f"{up}.norm1.weight"].dtype == torch.float32
        assert sd[f"{up}.conv1.weight"].shape == (8 * co, 3, 3, 3, c)
        assert sd[f"{up}.conv2.weight"].shape == (co, 3, 3, 3, co)
        assert sd[f"{up}.conv2.bias"].dtype == torch.float16
        assert f"{up}.norm2.weight" not in sd
        assert (f"{up}.to_subdiv.weight" in sd) == subdiv
        if subdiv:
            assert sd[f"{up}.to_subdiv.weight"].shape == (8, c)
            assert sd[f"{up}.to_subdiv.weight"].dtype == torch.float16
    assert not any(k.startswith("blocks.4.") for k in sd)


def test_shape_decoder_full_size():
    m = _build("FlexiDualGridVaeDecoder", resolution=256, **_UNET)
    sd = m.state_dict()
    assert _count(m) == 474_231_463 and len(sd) == 292
    _check_unet_keys(sd, 7, subdiv=True)


def test_texture_decoder_full_size():
    m = _build("SparseUnetVaeDecoder", out_channels=6, pred_subdiv=False, **_UNET)
    sd = m.state_dict()
    assert _count(m) == 474_216_006 and len(sd) == 284
    _check_unet_keys(sd, 6, subdiv=False)
