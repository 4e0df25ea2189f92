"""The self-attention's fused q/k norm + RoPE op (``trellis2_core.models.fused_qk``) against the unfused block code."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.models.blocks import SelfAttention
from trellis2_core.models.fused_qk import qk_norm_rope
from trellis2_core.sparse.rope import rope_cos_sin


def _attn_and_inputs(lead=(2,), n=23, heads=3, head_dim=12, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    attn = SelfAttention(heads * head_dim, heads, qk_rms_norm=True)
    with torch.no_grad():
        attn.q_rms_norm.gamma.copy_(torch.rand(heads, head_dim, generator=g) + 0.5)
        attn.k_rms_norm.gamma.copy_(torch.rand(heads, head_dim, generator=g) + 0.5)
    attn = attn.to(device)
    qkv = torch.randn(*lead, n, 3, heads, head_dim, generator=g).to(device, dtype)
    rope = rope_cos_sin(torch.randint(0, 16, (n, 3), generator=g).to(device), head_dim)
    return attn, qkv[..., 0, :, :], qkv[..., 1, :, :], rope


@pytest.mark.parametrize("lead", [(2,), ()], ids=["dense [B, N, H, D]", "packed sparse [N, H, D]"])
def test_fused_flag_gives_the_unfused_result(lead):
    attn, q, k, rope = _attn_and_inputs(lead)
    with torch.no_grad():
        fq, fk = attn.qk_norm_rope(q, k, rope, fused=True)
        uq, uk = attn.qk_norm_rope(q, k, rope)
    assert fq.shape == q.shape and fk.shape == k.shape
    torch.testing.assert_close(fq, uq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fk, uk, rtol=1e-6, atol=1e-6)


def test_without_norm_or_rope_the_flag_falls_back():
    attn, q, k, rope = _attn_and_inputs()
    with torch.no_grad():
        torch.testing.assert_close(attn.qk_norm_rope(q, k, None, fused=True), attn.qk_norm_rope(q, k, None))


def test_shape_errors_are_reported():
    attn, q, k, rope = _attn_and_inputs()
    with pytest.raises(ValueError, match="q and k must both be"):
        qk_norm_rope(q, k[:1], attn.q_rms_norm.gamma, attn.k_rms_norm.gamma, *rope, 1.0)
    with pytest.raises(ValueError, match="cos/sin must be"):
        qk_norm_rope(q, k, attn.q_rms_norm.gamma, attn.k_rms_norm.gamma, rope[0][:5], rope[1][:5], 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernel_eager_and_compiled_match_unfused():
    attn, q, k, rope = _attn_and_inputs((2,), 4099, 12, 128, torch.bfloat16, "cuda")
    step = torch.compile(lambda a, q, k, r: a.qk_norm_rope(q, k, r, fused=True), dynamic=True)
    with torch.no_grad():
        uq, uk = attn.qk_norm_rope(q, k, rope)
        fq, fk = attn.qk_norm_rope(q, k, rope, fused=True)
        cq, ck = step(attn, q, k, rope)
    for fused, unfused in ((fq, uq), (fk, uk)):
        err = (fused.float() - unfused.float()).abs() / unfused.float().abs().clamp_min(1.0)
        assert float(err.max()) <= 2.0 ** -5, float(err.max())
    assert torch.equal(cq, fq) and torch.equal(ck, fk)
