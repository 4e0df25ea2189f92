"""q/k RMS norm + RoPE kernel (``trellis2_kernels.qk_norm_rope``): the reference against an independent complex-number
formulation, the Triton kernel (CPU interpreter, GPU) against the reference, and the input checks."""
from __future__ import annotations

import pytest
import torch

from trellis2_kernels import KernelPolicy
from trellis2_kernels.qk_norm_rope import rms_norm_rope, rms_norm_rope_reference

_IMPL = "trellis2_kernels.qk_norm_rope.triton_impl"


def _inputs(b=2, n=37, h=3, d=16, dtype=torch.float32, device="cpu", seed=0, strided=True):
    """``x`` as the q view of a packed ``[B, N, 3, H, D]`` qkv tensor (or contiguous), gamma, a rotation table."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = torch.randn(b, n, 3, h, d, generator=g).to(device, dtype)[:, :, 0]
    else:
        x = torch.randn(b, n, h, d, generator=g).to(device, dtype)
    gamma = (torch.rand(h, d, generator=g) + 0.5).to(device)
    phase = torch.rand(n, d // 2, generator=g) * 6.3
    return x, gamma, phase.cos().to(device), phase.sin().to(device)


def test_reference_matches_complex_rotation():
    x, gamma, cos, sin = _inputs(dtype=torch.float64)
    d = x.shape[-1]
    normed = x / x.norm(dim=-1, keepdim=True) * gamma.double() * d ** 0.5
    rot = torch.view_as_complex(normed.unflatten(-1, (-1, 2)).contiguous())
    expected = torch.view_as_real(rot * torch.complex(cos.double(), sin.double())[:, None, :]).flatten(-2)
    got = rms_norm_rope_reference(x, gamma, cos, sin, d ** 0.5)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_reference_rounds_between_norm_and_rotation():
    """The model rounds the normalised q/k to the trunk dtype before rotating: the reference must too."""
    x, gamma, cos, sin = _inputs(dtype=torch.float16, seed=3)
    got = rms_norm_rope_reference(x, gamma, cos, sin, 4.0)
    y = torch.nn.functional.normalize(x.float(), dim=-1) * gamma * 4.0  # no intermediate rounding
    a, b = y[..., 0::2], y[..., 1::2]
    c, s = cos[:, None], sin[:, None]
    once = torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2).half()
    assert not torch.equal(got, once)
    torch.testing.assert_close(got, once, rtol=2e-3, atol=2e-3)


@pytest.fixture
def triton_impl(interpreted):
    return interpreted(_IMPL)


# The interpreter rounds float32 → bfloat16 by truncation (the GPU rounds to nearest even), so it is checked in
# float16, where both round to nearest: the kernel must then give the reference's bits exactly.
@pytest.mark.parametrize("b, n, h, d, strided", [
    (2, 37, 3, 16, True),    # ragged last token tile, q as a view of the packed qkv tensor
    (1, 64, 2, 32, False),   # whole tiles, contiguous input
    (1, 5, 1, 16, True),     # fewer tokens than one tile
])
def test_interpreter_is_bit_exact_in_half(triton_impl, b, n, h, d, strided):
    x, gamma, cos, sin = _inputs(b, n, h, d, torch.float16, seed=n, strided=strided)
    got = rms_norm_rope(x, gamma, cos, sin, d ** 0.5, policy=KernelPolicy("triton"))
    assert got.is_contiguous() and got.dtype == torch.float16
    assert torch.equal(got, rms_norm_rope_reference(x, gamma, cos, sin, d ** 0.5))


def test_interpreter_float32(triton_impl):
    x, gamma, cos, sin = _inputs(seed=5)
    got = rms_norm_rope(x, gamma, cos, sin, 4.0, policy=KernelPolicy("triton"))
    torch.testing.assert_close(got, rms_norm_rope_reference(x, gamma, cos, sin, 4.0), rtol=1e-5, atol=1e-5)


def test_zero_rows_stay_zero():
    """F.normalize clamps the norm at 1e-12: an all-zero head vector stays zero instead of becoming NaN."""
    x, gamma, cos, sin = _inputs(n=4)
    x = torch.zeros_like(x)
    assert torch.equal(rms_norm_rope(x, gamma, cos, sin, 4.0), torch.zeros_like(x))


@pytest.mark.parametrize("mutate, match", [
    (lambda x, g, c, s: (x[0], g, c, s), r"\[B, N, H, D\]"),
    (lambda x, g, c, s: (x, g[:1], c, s), "gamma must be"),
    (lambda x, g, c, s: (x, g, c[:3], s[:3]), "cos/sin must be"),
    (lambda x, g, c, s: (x.int(), g, c, s), "float16/bfloat16/float32"),
])
def test_bad_inputs_are_reported(mutate, match):
    args = mutate(*_inputs())
    with pytest.raises(ValueError, match=match):
        rms_norm_rope(*args, 4.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_kernel_matches_reference(dtype):
    x, gamma, cos, sin = _inputs(2, 4099, 12, 128, dtype, "cuda", seed=7)
    ref = rms_norm_rope_reference(x, gamma, cos, sin, 128 ** 0.5)
    got = rms_norm_rope(x, gamma, cos, sin, 128 ** 0.5)
    # only the norm's summation order differs: a last-bit difference before the rounding, on few elements
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    err = (got.float() - ref.float()).abs() / ref.float().abs().clamp_min(1.0)
    assert float(err.max()) <= 4 * ulp, float(err.max())
    assert float((got != ref).float().mean()) < 0.01
