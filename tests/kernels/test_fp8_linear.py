"""fp8 linear: the emulation against F.linear (error bound, edge rows), dispatch, tracing, and the _scaled_mm call.

The ``torch._scaled_mm`` call is checked on the CPU twice: numerically (PyTorch has a CPU ``_scaled_mm``, which must
give exactly the emulation's numbers: same fp8 operands, same scales) and for the CUDA layout contract (row-major
``mat1``, column-major ``mat2``, K/N multiples of 16, fp32 ``[M,1]``/``[1,N]`` scales), which the op's meta function
checks when it sees fake CUDA tensors. The ``gpu`` test repeats the numerical check on real hardware.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import trellis2_kernels.fp8_linear as fp8_mod
from trellis2_kernels.dispatch import KernelPolicy
from trellis2_kernels.fp8_linear import (FP8_DTYPE, FP8_MAX, fp8_linear, fp8_linear_reference, quantize_rowwise,
                                         scaled_mm_unsupported)
from trellis2_kernels.fp8_linear.scaled_mm_impl import fp8_linear_scaled_mm

REF = KernelPolicy(mode="reference")
# e4m3 keeps 3 mantissa bits: each operand element is off by at most 2^-4 relative (half a step of 2^-3), about
# 2^-4/sqrt(3) ≈ 3.6 % RMS for values spread over an octave; the two operands' errors add up in quadrature, and small
# elements of a row (far below its amax) lose more. Measured on Gaussian data: 2.5–4 %. Bound: 6 %.
REL_BOUND = 0.06
NOT_EXACT = 1e-3  # bf16 rounding of the output alone is ~0.2 %: below this no quantisation happened


def _inputs(m: int, k: int, n: int, dtype: torch.dtype, seed: int = 0, lead: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, m, k, generator=g)
    x[..., 3] *= 40  # an outlier channel, as DiT activations have: it sets every row's scale
    w = torch.randn(n, k, generator=g) / k ** 0.5
    b = torch.randn(n, generator=g)
    return x.to(dtype), w.to(dtype), b.to(dtype)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(), (2,)])
def test_reference_is_within_the_fp8_bound_and_not_exact(dtype, lead):
    x, w, b = _inputs(67, 96, 80, dtype, lead=lead)
    exact = F.linear(x.double(), w.double(), b.double())
    out = fp8_linear_reference(x, w, b)
    assert out.dtype == dtype and out.shape == (*lead, 67, 80)
    rel = _rel(out, exact)
    assert NOT_EXACT < rel < REL_BOUND, rel
    no_bias = _rel(fp8_linear_reference(x, w), F.linear(x.double(), w.double()))
    assert NOT_EXACT < no_bias < REL_BOUND, no_bias


def test_quantisation_scale_is_row_amax_over_448():
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0], [1e-30, -3e-30, 0.0, 2e-30]])
    q, s = quantize_rowwise(x)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32 and s.shape == (3, 1)
    torch.testing.assert_close(s[0, 0], torch.tensor(3.0 / FP8_MAX))
    assert float(q[0].float().abs().max()) == FP8_MAX  # the row's amax lands on the largest e4m3 value
    assert torch.equal(q[1].float(), torch.zeros(4)) and float(s[1, 0]) > 0  # zero row: no NaN, all zero
    assert bool(torch.isfinite(q.float()).all()) and float(q[2].float().abs().max()) == FP8_MAX  # tiny row
    # values that are e4m3 numbers times a power of two survive the round trip exactly
    exact = torch.tensor([[448.0, 1.0, -0.5, 96.0, 0.0]]) * 2.0 ** -7
    q, s = quantize_rowwise(exact)
    assert torch.equal(q.float() * s, exact)


def test_zero_rows_and_columns_give_the_bias():
    x, w, b = _inputs(16, 32, 48, torch.bfloat16, seed=1)
    x[5] = 0  # a zero token
    w[7] = 0  # a zero output channel
    out = fp8_linear(x, w, b)
    assert bool(torch.isfinite(out.float()).all())
    assert torch.equal(out[5], b) and torch.equal(out[:, 7], b[7].expand(16))
    empty = fp8_linear(x[:0], w, b)
    assert empty.shape == (0, 48) and empty.dtype == torch.bfloat16


def test_scaled_mm_call_matches_the_emulation_on_cpu():
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this PyTorch has no _scaled_mm")
    for lead, bias in (((), True), ((3,), False)):
        x, w, b = _inputs(40, 64, 96, torch.bfloat16, seed=2, lead=lead)
        b = b if bias else None
        try:
            out = fp8_linear_scaled_mm(x, w, b)
        except (RuntimeError, NotImplementedError) as err:  # a build without the CPU fp8 GEMM
            pytest.skip(f"CPU _scaled_mm unavailable: {err}")
        assert out.dtype == torch.bfloat16 and out.shape == (*lead, 40, 96)
        ref = fp8_linear_reference(x, w, b)
        # same fp8 operands and scales; only the summation order and where the bias is added may differ
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=1e-2)
        assert _rel(out, ref) < 4e-3


def test_scaled_mm_call_meets_the_cuda_layout_contract():
    """The op's meta function checks (for CUDA tensors) strides, K/N divisibility and scale shapes/dtypes."""
    with FakeTensorMode():
        x = torch.empty(2, 37, 1536, device="cuda", dtype=torch.bfloat16)
        xt = torch.empty_strided((2, 37, 1536), (1, 2, 74), device="cuda", dtype=torch.bfloat16)  # channel-major
        w = torch.empty(4608, 1536, device="cuda", dtype=torch.bfloat16)
        b = torch.empty(4608, device="cuda", dtype=torch.bfloat16)
        for inp in (x, xt):
            out = fp8_linear_scaled_mm(inp, w, b)
            assert out.shape == (2, 37, 4608) and out.dtype == torch.bfloat16 and out.device.type == "cuda"
        with pytest.raises(RuntimeError, match="divisible by 16"):  # why dispatch checks K and N first
            fp8_linear_scaled_mm(torch.empty(4, 24, device="cuda", dtype=torch.bfloat16),
                                 torch.empty(4608, 24, device="cuda", dtype=torch.bfloat16), b)


def test_dispatch_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("TRELLIS2_KERNELS", raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the _scaled_mm path must not run on the CPU")

    monkeypatch.setattr("trellis2_kernels.fp8_linear.scaled_mm_impl.fp8_linear_scaled_mm", forbidden)
    x, w, b = _inputs(32, 64, 32, torch.bfloat16, seed=3)
    assert torch.equal(fp8_linear(x, w, b), fp8_linear_reference(x, w, b))
    assert torch.equal(fp8_linear(x, w, b, policy=REF), fp8_linear_reference(x, w, b))
    assert "not an NVIDIA GPU" in scaled_mm_unsupported(x, w)
    with pytest.raises(RuntimeError, match="cannot run here"):
        fp8_linear(x, w, b, policy=KernelPolicy(mode="triton"))
    monkeypatch.setenv("TRELLIS2_KERNELS", "fp8")
    with pytest.raises(ValueError, match="not a valid kernel mode"):
        fp8_linear(x, w, b)


def test_dispatch_rules_on_a_gpu(monkeypatch):
    """Which (capability, dtype, shape) take _scaled_mm: decided on fake CUDA tensors with a patched capability."""
    monkeypatch.delenv("TRELLIS2_KERNELS", raising=False)
    calls = []

    def recorder(x, w, b=None):
        calls.append(tuple(x.shape))
        return fp8_linear_reference(x, w, b)

    monkeypatch.setattr("trellis2_kernels.fp8_linear.scaled_mm_impl.fp8_linear_scaled_mm", recorder)
    cap = {"value": (9, 0)}
    monkeypatch.setattr(fp8_mod, "_capability", lambda index: cap["value"])
    monkeypatch.setattr(torch.version, "hip", None)
    with FakeTensorMode():
        def make(m, k, n, dtype=torch.bfloat16):
            return (torch.empty(m, k, device="cuda", dtype=dtype), torch.empty(n, k, device="cuda", dtype=dtype))

        assert scaled_mm_unsupported(*make(8, 64, 32)) is None
        fp8_linear(*make(8, 64, 32))
        assert calls == [(8, 64)]
        assert "multiples of 16" in scaled_mm_unsupported(*make(8, 72, 40))
        assert "multiples of 16" in scaled_mm_unsupported(*make(8, 64, 40))
        assert "bfloat16" in scaled_mm_unsupported(*make(8, 64, 32, torch.float16))
        assert "empty" in scaled_mm_unsupported(*make(0, 64, 32))
        fp8_linear(*make(8, 64, 32, torch.float32))  # falls back to the emulation
        fp8_linear(*make(8, 64, 32), policy=REF)
        assert calls == [(8, 64)]
        cap["value"] = (8, 6)  # Ampere: no fp8 tensor cores
        assert "compute capability" in scaled_mm_unsupported(*make(8, 64, 32))
        with pytest.raises(RuntimeError, match="compute capability"):
            fp8_linear(*make(8, 64, 32), policy=KernelPolicy(mode="triton"))
        monkeypatch.setattr(torch.version, "hip", "6.2")
        cap["value"] = (9, 4)  # an MI300 reports 9.4 but uses other fp8 formats
        assert "not an NVIDIA GPU" in scaled_mm_unsupported(*make(8, 64, 32))


@pytest.mark.parametrize("bad, match", [
    (lambda x, w, b: (x[..., :-1], w, b), "K >= 1"),
    (lambda x, w, b: (x, w[:, :0], b), "K >= 1"),
    (lambda x, w, b: (x, w, b[:-1]), r"bias must be \[N\]"),
    (lambda x, w, b: (x.long(), w, b), "floating point"),
    (lambda x, w, b: (x, w[None], b), "K >= 1"),
])
def test_bad_inputs_are_rejected(bad, match):
    x, w, b = _inputs(4, 32, 16, torch.float32)
    with pytest.raises(ValueError, match=match):
        fp8_linear(*bad(x, w, b))


def test_traces_into_one_graph():
    """torch.compile traces the op (dispatch, quantisation) without a graph break and computes the same numbers."""
    x, w, b = _inputs(24, 64, 48, torch.bfloat16, seed=4, lead=(2,))
    compiled = torch.compile(fp8_linear, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), fp8_linear(x, w, b), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an NVIDIA GPU with fp8 tensor cores (compute capability >= 8.9)")
def test_gpu_scaled_mm_matches_the_emulation():
    for m, k, n in ((4096, 1536, 4608), (333, 8192, 1536)):
        x, w, b = (t.cuda() for t in _inputs(m, k, n, torch.bfloat16, seed=5))
        assert scaled_mm_unsupported(x, w) is None
        out = fp8_linear(x, w, b)
        ref = fp8_linear(x, w, b, policy=REF)
        assert _rel(out, ref) < 4e-3, (m, k, n)
        exact = F.linear(x.double(), w.double(), b.double())
        assert NOT_EXACT < _rel(out, exact) < REL_BOUND
