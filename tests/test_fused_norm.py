"""The block's fused LayerNorm + modulation op (``trellis2_core.models.fused_norm``) against the unfused block code."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.models.blocks import ModulatedTransformerCrossBlock
from trellis2_core.models.fused_norm import layer_norm_modulate


def _block_and_inputs(b=2, n=13, c=24, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    block = ModulatedTransformerCrossBlock(c, 16, 2).to(device)
    x = (torch.randn(b, n, c, generator=g) * 2).to(device, dtype)
    shift, scale = (0.3 * torch.randn(2, b, c, generator=g)).to(device, dtype)
    return block, x, shift, scale


def test_fused_flag_gives_the_unfused_result():
    block, x, shift, scale = _block_and_inputs()
    for norm in (block.norm1, block.norm3):
        fused = block.norm_modulate(norm, x, shift, scale, True)
        torch.testing.assert_close(fused, block.norm_modulate(norm, x, shift, scale, False), rtol=1e-6, atol=1e-6)


def test_half_precision_rounds_like_layer_norm32():
    """LayerNorm32 returns the input dtype before the modulation: the fused op keeps that rounding."""
    block, x, shift, scale = _block_and_inputs(dtype=torch.float16, seed=2)
    fused = block.norm_modulate(block.norm1, x, shift, scale, True)
    unfused = block.norm_modulate(block.norm1, x, shift, scale, False)  # eager half ops round after each step
    torch.testing.assert_close(fused, unfused, rtol=2e-3, atol=2e-3)


def test_shape_errors_are_reported():
    _, x, shift, scale = _block_and_inputs()
    with pytest.raises(ValueError, match="needs shift/scale"):
        layer_norm_modulate(x, shift[:, None], scale, 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_eager_and_compiled_match_unfused():
    block, x, shift, scale = _block_and_inputs(2, 4099, 1536, torch.bfloat16, "cuda")
    step = torch.compile(lambda x, s, c: block.norm_modulate(block.norm1, x, s, c, True), dynamic=True)
    with torch.no_grad():
        unfused = block.norm_modulate(block.norm1, x, shift, scale, False)
        fused = block.norm_modulate(block.norm1, x, shift, scale, True)
        compiled = step(x, shift, scale)
    err = (fused.float() - unfused.float()).abs() / unfused.float().abs().clamp_min(1.0)
    assert float(err.max()) <= 2.0 ** -5, float(err.max())
    assert torch.equal(compiled, fused)
