"""Flash-attention kernel (``trellis2_kernels.attention``): the Triton kernel (CPU interpreter, GPU) against the
float32 reference, and the reference against PyTorch's SDPA."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trellis2_kernels import KernelPolicy
from trellis2_kernels.attention import attention_reference, flash_attention

_IMPL = "trellis2_kernels.attention.triton_impl"


def _qkv(b, lq, lk, h, d, dtype=torch.float32, device="cpu", seed=0, v_stride3=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g)
    if v_stride3:  # k, v as views of a packed [B, L, 3, H, D] tensor, as the DiT's qkv projection gives them
        packed = torch.randn(b, lk, 3, h, d, generator=g).to(device, dtype)
        return q.to(device, dtype), packed[:, :, 1], packed[:, :, 2]
    k = torch.randn(b, lk, h, d, generator=g)
    v = torch.randn(b, lk, h, d, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def test_reference_matches_sdpa():
    q, k, v = _qkv(2, 13, 29, 3, 16)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(attention_reference(q, k, v, 1 / 4), sdpa, rtol=1e-5, atol=1e-5)


@pytest.fixture
def triton_impl(interpreted):
    return interpreted(_IMPL)


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("b, lq, lk, h, d, bm, bn", [
    (1, 64, 64, 1, 16, 32, 16),      # whole tiles only
    (2, 37, 50, 3, 32, 32, 16),      # ragged queries and a ragged last key tile
    (1, 20, 7, 2, 16, 16, 16),       # fewer keys than one tile (masked tile only)
])
def test_interpreter_matches_reference(triton_impl, b, lq, lk, h, d, bm, bn, tma):
    q, k, v = _qkv(b, lq, lk, h, d, seed=lq)
    cfg = triton_impl.AttentionConfig(block_m=bm, block_n=bn, num_warps=4, num_stages=1, tma=tma)
    out = triton_impl.attention_triton(q, k, v, 0.3, cfg)
    torch.testing.assert_close(out, attention_reference(q, k, v, 0.3), rtol=2e-5, atol=2e-5)


def test_interpreter_strided_kv_through_dispatch(triton_impl):
    q, k, v = _qkv(1, 40, 33, 2, 16, v_stride3=True)
    got = flash_attention(q, k, v, policy=KernelPolicy("triton"))
    torch.testing.assert_close(got, attention_reference(q, k, v, 1 / math.sqrt(16)), rtol=2e-5, atol=2e-5)


def test_input_checks():
    q, k, v = _qkv(1, 4, 5, 2, 16)
    with pytest.raises(ValueError, match="expected q"):
        flash_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="share one of"):
        flash_attention(q, k.double(), v.double())
    with pytest.raises(ValueError, match="no keys"):
        flash_attention(q, k[:, :0], v[:, :0])
    # odd head dims and CPU tensors fall back to the reference
    q3, k3, v3 = _qkv(1, 4, 5, 2, 12)
    torch.testing.assert_close(flash_attention(q3, k3, v3), attention_reference(q3, k3, v3, 12 ** -0.5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lq, lk", [(4096, 4096), (1000, 1029), (20000, 4101), (777, 333)])
def test_gpu_kernel_matches_reference(dtype, lq, lk):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    q, k, v = _qkv(2, lq, lk, 12, 128, dtype, "cuda", v_stride3=True)
    q = q / 4  # softmax weights of realistic sharpness
    got = flash_attention(q, k, v)
    ref = attention_reference(q, k, v, 128 ** -0.5)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    err, err_sdpa = (got.float() - ref.float()).abs().max(), (sdpa.float() - ref.float()).abs().max()
    assert err <= 2 * err_sdpa + 1e-3, (float(err), float(err_sdpa))
