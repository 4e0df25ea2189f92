"""The MLP's GEMM + tanh-GELU epilogue op (``trellis2_core.models.fused_mlp``) against its unfused definition."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trellis2_core.models.blocks import FeedForward
from trellis2_core.models.fused_mlp import linear_gelu_tanh, linear_gelu_tanh_reference


def _operands(tokens=(3, 17), cin=24, cout=40, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*tokens, cin, generator=g).to(device, dtype)
    w = (torch.randn(cout, cin, generator=g) / cin ** 0.5).to(device, dtype)
    b = torch.randn(cout, generator=g).to(device, dtype)
    return x, w, b


def test_cpu_is_the_tanh_gelu_not_the_erf_one():
    x, w, b = _operands()
    out = linear_gelu_tanh(x, w, b)
    torch.testing.assert_close(out, F.gelu(F.linear(x, w, b), approximate="tanh"), rtol=0, atol=0)
    assert (out - F.gelu(F.linear(x, w, b))).abs().max() > 1e-6  # the erf form differs: we must not use it


def test_feed_forward_fused_flag_matches_plain():
    ff = FeedForward(24, mlp_ratio=2.0)
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(ff(x, fused=True), ff(x), rtol=1e-6, atol=1e-6)


def test_shape_errors_are_reported():
    x, w, b = _operands()
    with pytest.raises(ValueError, match="do not fit"):
        linear_gelu_tanh(x, w[:, :5], b)
    with pytest.raises(ValueError, match="do not fit"):
        linear_gelu_tanh(x, w, b[:3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_epilogue_matches_reference_eager_and_compiled(dtype):
    x, w, b = _operands((2, 4099), 1536, 8192, dtype, "cuda")
    exact = linear_gelu_tanh_reference(x.float(), w.float(), b.float())
    ref = linear_gelu_tanh_reference(x, w, b)
    out = linear_gelu_tanh(x, w, b)
    compiled = torch.compile(linear_gelu_tanh, dynamic=True)(x, w, b)
    assert out.shape == ref.shape and out.dtype == dtype
    # the epilogue rounds once (fp32 accumulator → GELU → half), the reference twice: no further from fp32
    err_out, err_ref = (out.float() - exact).abs().max(), (ref.float() - exact).abs().max()
    assert err_out <= err_ref * 1.01 + 1e-6, (err_out, err_ref)
    torch.testing.assert_close(compiled, out, rtol=0, atol=0)
