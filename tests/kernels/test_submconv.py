"""Submanifold conv: reference vs dense conv3d, Triton (CPU interpreter / GPU) vs reference, plans, input checks.

Tolerances: fp32 paths agree to summation-order rounding (atol 1e-4 on outputs of size ~10). Half outputs are
compared after one rounding to the output dtype, so the bound is a few ulps of the largest output: 2**-10 relative
for fp16, 2**-7 for bf16 (plus fp32-vs-half input rounding where the dense oracle sees rounded inputs).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trellis2_kernels import KernelPolicy
from trellis2_kernels.neighbor_map import build_neighbor_map
from trellis2_kernels.submconv import SubmconvPlan, prepare_submconv, submconv
from trellis2_kernels.submconv.configs import ConvConfig, select_config

REF = KernelPolicy("reference")
TRITON = KernelPolicy("triton")


def random_coords(n: int, span: int, batches: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, span, (n, 4), generator=g, dtype=torch.int32)
    c[:, 0] = torch.randint(0, batches, (n,), generator=g, dtype=torch.int32)
    c = torch.unique(c, dim=0)
    return c[torch.randperm(c.shape[0], generator=g)].contiguous()


def shell(res: int, n: int) -> torch.Tensor:
    """The n voxels of a res^3 grid nearest to a centred sphere (a decoder-like thin surface)."""
    ax = torch.arange(res, dtype=torch.float32) - (res - 1) / 2
    d = (ax.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2).sqrt() - 0.4 * res
    idx = torch.topk(d.abs().flatten(), n, largest=False).indices
    xyz = torch.stack([idx // (res * res), (idx // res) % res, idx % res], dim=1).to(torch.int32)
    return torch.cat([torch.zeros_like(xyz[:, :1]), xyz], dim=1)


def make_inputs(n: int, ci: int, co: int, dtype=torch.float32, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed + 1000)
    feats = torch.randn(n, ci, generator=g).to(dtype)
    weight = (torch.randn(co, 3, 3, 3, ci, generator=g) / (27 * ci) ** 0.5).to(dtype)
    b = torch.randn(co, generator=g).to(dtype) if bias else None
    return feats, weight, b


def dense_oracle(coords, feats, weight, bias):
    """Dense conv3d (k=3, pad=1) on the zero-filled grid, read back at the active sites (spec §6.2)."""
    b, x, y, z = (coords[:, i].long() for i in range(4))
    grid = torch.zeros(int(b.max()) + 1, feats.shape[1], int(x.max()) + 1, int(y.max()) + 1, int(z.max()) + 1,
                       dtype=torch.float32)
    grid[b, :, x, y, z] = feats.float()
    out = F.conv3d(grid, weight.float().permute(0, 4, 1, 2, 3), None if bias is None else bias.float(), padding=1)
    return out[b, :, x, y, z]


# ---------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("seed, n, span, batches, ci, co, bias", [
    (0, 300, 7, 1, 5, 19, True),
    (1, 500, 9, 3, 16, 8, False),
    (2, 200, 12, 2, 3, 32, True),
    (3, 64, 4, 1, 1, 1, True),
])
def test_reference_matches_dense_conv_fp32(seed, n, span, batches, ci, co, bias) -> None:
    coords = random_coords(n, span, batches, seed)
    feats, weight, b = make_inputs(coords.shape[0], ci, co, seed=seed, bias=bias)
    out = submconv(feats, build_neighbor_map(coords), weight, b, policy=REF)
    assert out.dtype == torch.float32 and out.shape == (coords.shape[0], co)
    torch.testing.assert_close(out, dense_oracle(coords, feats, weight, b), atol=1e-4, rtol=1e-4)


def test_reference_batches_do_not_mix() -> None:
    # The same xyz in two batches: with batch 1 empty except one voxel, batch 0's output must not see it.
    coords = torch.tensor([[0, 2, 2, 2], [0, 2, 2, 3], [1, 2, 2, 2], [1, 3, 3, 3]], dtype=torch.int32)
    feats, weight, b = make_inputs(4, 4, 6)
    out = submconv(feats, build_neighbor_map(coords), weight, b, policy=REF)
    torch.testing.assert_close(out, dense_oracle(coords, feats, weight, b), atol=1e-5, rtol=1e-5)
    alone = submconv(feats[:2], build_neighbor_map(coords[:2]), weight, b, policy=REF)
    torch.testing.assert_close(out[:2], alone, atol=1e-6, rtol=0)


def test_reference_single_voxel_and_empty() -> None:
    coords = torch.tensor([[0, 4, 0, 9]], dtype=torch.int32)
    feats, weight, b = make_inputs(1, 7, 5)
    out = submconv(feats, build_neighbor_map(coords), weight, b, policy=REF)
    torch.testing.assert_close(out, feats @ weight[:, 1, 1, 1, :].t() + b, atol=1e-6, rtol=1e-6)
    for policy in (REF, None):
        empty = submconv(torch.empty(0, 7), torch.empty(0, 27, dtype=torch.int32), weight, b, policy=policy)
        assert empty.shape == (0, 5) and empty.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_half_matches_dense_conv(dtype) -> None:
    coords = random_coords(400, 8, 2, seed=5)
    feats, weight, b = make_inputs(coords.shape[0], 12, 20, dtype=dtype, seed=5)
    out = submconv(feats, build_neighbor_map(coords), weight, b, policy=REF)
    assert out.dtype == dtype
    expected = dense_oracle(coords, feats, weight, b)  # the same rounded inputs in fp32
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    torch.testing.assert_close(out.float(), expected, atol=2 * ulp * float(expected.abs().max()), rtol=0)


def test_reference_large_shell_few_channels() -> None:
    coords = shell(96, 50_000)
    feats, weight, b = make_inputs(coords.shape[0], 4, 3, seed=7)
    out = submconv(feats, prepare_submconv(build_neighbor_map(coords)), weight, b, policy=REF)
    torch.testing.assert_close(out, dense_oracle(coords, feats, weight, b), atol=1e-4, rtol=1e-4)


def test_reference_chunking_matches_whole(monkeypatch) -> None:
    from trellis2_kernels.submconv import reference

    coords = random_coords(300, 7, 2, seed=9)
    nbr = build_neighbor_map(coords)
    feats, weight, b = make_inputs(coords.shape[0], 8, 8, seed=9)
    whole = submconv(feats, nbr, weight, b, policy=REF)
    monkeypatch.setattr(reference, "_TEMP_BYTES", 27 * 8 * 4 * 7)  # 7 rows per chunk
    # Same products and sums; a BLAS may block a 7-row GEMM differently, so allow summation-order rounding.
    torch.testing.assert_close(submconv(feats, nbr, weight, b, policy=REF), whole, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- checks


def test_bad_inputs_raise() -> None:
    coords = random_coords(50, 5, seed=11)
    n = coords.shape[0]
    nbr = build_neighbor_map(coords)
    feats, weight, b = make_inputs(n, 4, 6)
    cases = [
        (lambda: submconv(feats.long(), nbr, weight, b), "float32, float16 or bfloat16"),
        (lambda: submconv(feats[0], nbr, weight, b), r"\[N, Ci\]"),
        (lambda: submconv(feats, nbr.long(), weight, b), "int32"),
        (lambda: submconv(feats, nbr[:, :26], weight, b), r"\[N, 27\]"),
        (lambda: submconv(feats, nbr[:-1], weight, b), "rows"),
        (lambda: submconv(feats, nbr, weight[..., :3], b), "Ci=3"),
        (lambda: submconv(feats, nbr, weight.view(6, 27, 4), b), r"\[Co, 3, 3, 3, Ci\]"),
        (lambda: submconv(feats, nbr, weight.half(), b), "dtype"),
        (lambda: submconv(feats, nbr, weight, b[:5]), "bias"),
        (lambda: submconv(feats, nbr, weight, b.int()), "bias"),
        (lambda: submconv(feats.to("meta"), nbr, weight, b), "device|on meta"),
        (lambda: submconv(feats, nbr, weight.to("meta"), b), "on meta"),
        (lambda: submconv(feats, nbr, weight, b.to("meta")), "on meta"),
        (lambda: submconv(feats, "nbr", weight, b), "SubmconvPlan"),
        (lambda: prepare_submconv(nbr.float()), "int32"),
        (lambda: prepare_submconv(nbr.view(-1)), r"\[N, 27\]"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_plan_is_reusable() -> None:
    coords = random_coords(200, 6, seed=12)
    plan = prepare_submconv(build_neighbor_map(coords), policy=REF)
    assert isinstance(plan, SubmconvPlan) and plan.n == coords.shape[0]
    feats, weight, b = make_inputs(plan.n, 4, 4)
    torch.testing.assert_close(submconv(feats, plan, weight, b, policy=REF),
                               submconv(feats, plan.nbr, weight, b, policy=REF), atol=0, rtol=0)


def test_config_heuristics_are_launchable() -> None:
    from trellis2_kernels.submconv.configs import _TABLE, _heuristic

    for cfg in list(_TABLE.values()) + [_heuristic(n, ci, co, dt, 132) for n in (10, 5000, 10**6)
                                        for ci, co in ((3, 8), (64, 64), (96, 200), (512, 512), (1024, 64))
                                        for dt in (torch.float16, torch.float32)]:
        if cfg.method == "explicit":
            continue
        for size in (cfg.block_n, cfg.block_co, cfg.block_k):
            assert size >= 16 and size & (size - 1) == 0, cfg
        assert 256 % cfg.block_n == 0 and cfg.split_k >= 1 and cfg.num_stages >= 1
    assert select_config(100, 8, 8, torch.float16, torch.device("cpu")).method == "implicit"


# ------------------------------------------------------------------------------------- Triton (interpreter)


def _tolerance(dtype: torch.dtype, ref: torch.Tensor) -> dict:
    if dtype == torch.float32:
        return dict(atol=1e-4, rtol=1e-4)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    return dict(atol=2 * ulp * float(ref.abs().max()), rtol=0)


@pytest.mark.usefixtures("triton_interpreter")
class TestTritonInterpreter:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_matches_reference(self, dtype) -> None:
        coords = random_coords(260, 7, 2, seed=21)
        plan = prepare_submconv(build_neighbor_map(coords), policy=TRITON)
        feats, weight, b = make_inputs(plan.n, 5, 19, dtype=dtype, seed=21)
        ref = submconv(feats, plan, weight, b, policy=REF)
        out = submconv(feats, plan, weight, b, policy=TRITON)
        assert out.dtype == dtype and out.shape == ref.shape
        torch.testing.assert_close(out.float(), ref.float(), **_tolerance(dtype, ref.float()))

    @pytest.mark.parametrize("cfg", [
        ConvConfig("implicit", 16, 16, 16, 4, 1, 1, 0),  # several channel blocks and K chunks, ragged edges
        ConvConfig("implicit", 16, 16, 16, 4, 1, 3, 0),  # split-K with an uneven split
        ConvConfig("implicit", 32, 16, 16, 4, 1, 1, 1),  # channel blocks fastest launch order
        ConvConfig("implicit", 16, 32, 32, 4, 1, 2, 3),  # grouped launch order with a partial last group
    ])
    def test_launch_configs(self, cfg) -> None:
        from trellis2_kernels.submconv.triton_impl import submconv_triton

        coords = random_coords(150, 6, 1, seed=22)
        plan = prepare_submconv(build_neighbor_map(coords), policy=TRITON)
        feats, weight, b = make_inputs(plan.n, 24, 20, seed=22, bias=cfg.split_k == 1)
        ref = submconv(feats, plan, weight, b, policy=REF)
        torch.testing.assert_close(submconv_triton(feats, plan, weight, b, cfg), ref, atol=1e-4, rtol=1e-4)

    def test_edge_sizes_and_raw_map(self) -> None:
        for n in (0, 1, 2):
            coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2]], dtype=torch.int32)[:n]
            nbr = build_neighbor_map(coords, policy=TRITON)
            feats, weight, b = make_inputs(n, 3, 4)
            out = submconv(feats, nbr, weight, b, policy=TRITON)  # raw map: a plan is built on the fly
            torch.testing.assert_close(out, submconv(feats, nbr, weight, b, policy=REF), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_matches_reference(dtype) -> None:
    coords = shell(64, 9000).cuda()
    nbr = build_neighbor_map(coords, policy=TRITON)
    assert torch.equal(nbr, build_neighbor_map(coords, policy=REF))
    plan = prepare_submconv(nbr, policy=TRITON)
    for ci, co in ((64, 64), (40, 72), (256, 512)):
        feats, weight, b = (t.cuda() if t is not None else None for t in make_inputs(plan.n, ci, co, dtype=dtype))
        ref = submconv(feats.float(), plan, weight.float(), b.float(), policy=REF)
        out = submconv(feats, plan, weight, b, policy=TRITON)
        rel = float((out.float() - ref).norm() / ref.norm())
        assert rel < (1e-5 if dtype == torch.float32 else 1e-2), (ci, co, rel)
