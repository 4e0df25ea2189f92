"""Non-affine LayerNorm + adaLN modulation kernel (``trellis2_kernels.layer_norm_modulate``): the reference against
the block's unfused ops, the Triton kernel (CPU interpreter, GPU) against the reference, and the input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trellis2_kernels import KernelPolicy
from trellis2_kernels.layer_norm_modulate import layer_norm_modulate, layer_norm_modulate_reference

_IMPL = "trellis2_kernels.layer_norm_modulate.triton_impl"


def _inputs(b=2, n=11, c=24, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, n, c, generator=g) * 3 + 1).to(device, dtype)
    shift, scale = (0.5 * torch.randn(2, b, c, generator=g)).to(device, dtype)
    return x, shift, scale


def test_reference_is_layer_norm_then_modulation():
    x, shift, scale = _inputs(dtype=torch.float64)
    expected = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    got = layer_norm_modulate_reference(x, shift, scale, 1e-6)  # computed in float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def triton_impl(interpreted):
    return interpreted(_IMPL)


# float16, not bfloat16: the interpreter rounds float32 → bfloat16 by truncation (the GPU rounds to nearest even)
@pytest.mark.parametrize("b, n, c", [(2, 11, 24), (1, 8, 32), (3, 1, 5)])  # ragged rows; a width below one tile
def test_interpreter_is_bit_exact_in_half(triton_impl, b, n, c):
    x, shift, scale = _inputs(b, n, c, torch.float16, seed=n)
    got = layer_norm_modulate(x, shift, scale, 1e-6, policy=KernelPolicy("triton"))
    assert torch.equal(got, layer_norm_modulate_reference(x, shift, scale, 1e-6))


def test_interpreter_float32(triton_impl):
    x, shift, scale = _inputs(seed=4)
    got = layer_norm_modulate(x, shift, scale, 1e-6, policy=KernelPolicy("triton"))
    torch.testing.assert_close(got, layer_norm_modulate_reference(x, shift, scale, 1e-6), rtol=1e-5, atol=1e-5)


def test_constant_rows_give_the_shift():
    """A constant row has zero variance: eps keeps the norm finite and the output is the shift."""
    x, shift, scale = _inputs()
    x = torch.full_like(x, 2.5)
    torch.testing.assert_close(layer_norm_modulate(x, shift, scale, 1e-6), shift[:, None].expand_as(x))


@pytest.mark.parametrize("mutate, match", [
    (lambda x, s, c: (x[0], s, c), r"\[B, N, C\]"),
    (lambda x, s, c: (x, s[:1], c), "shift/scale must be"),
    (lambda x, s, c: (x.int(), s, c), "float16/bfloat16/float32"),
])
def test_bad_inputs_are_reported(mutate, match):
    with pytest.raises(ValueError, match=match):
        layer_norm_modulate(*mutate(*_inputs()), 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_kernel_matches_reference(dtype):
    x, shift, scale = _inputs(2, 4099, 1536, dtype, "cuda", seed=9)
    ref = layer_norm_modulate_reference(x, shift, scale, 1e-6)
    got = layer_norm_modulate(x, shift, scale, 1e-6)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    err = (got.float() - ref.float()).abs() / ref.float().abs().clamp_min(1.0)
    assert float(err.max()) <= 4 * ulp, float(err.max())
    assert float((got != ref).float().mean()) < 0.01
