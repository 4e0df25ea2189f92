"""Flow DiTs (dense + sparse), their blocks and 3-D RoPE: golden cases and unit checks (spec §4, §13.2–13.8)."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trellis2_core.conformance.case import load_case
from trellis2_core.conformance.cases_dit import run_dit_dense, run_dit_sparse
from trellis2_core.loading import load_model
from trellis2_core.models import model_class
from trellis2_core.models.blocks import MultiHeadRMSNorm, timestep_embedding
from trellis2_core.sparse import SparseTensor
from trellis2_core.sparse.rope import apply_rope, grid_positions, grid_rope, rope_frequencies, sparse_rope

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden"
PIPELINE = GOLDEN / "tiny-pipeline"

DIT_CASES = ["dit_ss_flow", "dit_ss_flow_batch2", "dit_shape_flow_512", "dit_shape_flow_1024",
             "dit_shape_flow_1024_grid96", "dit_tex_flow_512", "dit_tex_flow_1024", "dit_shape_flow_512_batch2"]


def _need_golden() -> None:
    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN}")


def _ckpt(key: str) -> Path:
    models = json.loads((PIPELINE / "pipeline.json").read_text())["args"]["models"]
    return PIPELINE / models[key]


@functools.lru_cache(maxsize=None)
def _model(key: str, dtype: str | None = None) -> torch.nn.Module:
    return load_model(PIPELINE, key, dtype_override=dtype)


def _check(case, out: dict[str, torch.Tensor]) -> None:
    tolerances = case.meta["tolerance"]
    for name, gold in case.expected.items():
        if not name.startswith("output."):
            continue
        assert name in out, f"{case.name}: missing {name}"
        cand, tol = out[name], tolerances[name]
        assert cand.shape == gold.shape, f"{case.name}/{name}: shape {list(cand.shape)} vs {list(gold.shape)}"
        if tol == "exact":
            assert torch.equal(cand.to(gold.dtype), gold), f"{case.name}/{name}: not exact"
            continue
        err = (cand.double() - gold.double()).abs()
        lim = tol["atol"] + tol["rtol"] * gold.double().abs()
        bad = int((err > lim).sum()) + int((~torch.isfinite(cand)).sum())
        assert bad == 0, f"{case.name}/{name}: {bad} elements out of tolerance (max err {err.max():.3g})"


@pytest.mark.parametrize("name", DIT_CASES)
def test_golden_dit(name):
    _need_golden()
    kinds = json.loads((GOLDEN / "index.json").read_text())["cases"]
    case = load_case(GOLDEN, name, kinds[name], _model)
    handler = {"dit_dense": run_dit_dense, "dit_sparse": run_dit_sparse}[case.kind]
    _check(case, handler(case))


# ---------------------------------------------------------------------------------------------- RoPE (§4.3)
def _complex_rope(x: torch.Tensor, positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The complex-number formulation: adjacent pairs as complex numbers × exp(i·phase), phase 0 padding."""
    fd = head_dim // 2 // 3
    freqs = 1.0 / (10000.0 ** (torch.arange(fd, dtype=torch.float64) / fd))
    phases = (positions.double()[:, :, None] * freqs).reshape(positions.shape[0], -1)
    phases = torch.cat([phases, phases.new_zeros(phases.shape[0], head_dim // 2 - phases.shape[1])], dim=1)
    rot = torch.polar(torch.ones_like(phases), phases)  # [N, D/2] complex128
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot[:, None, :]).reshape(x.shape)


def test_rope_frequencies_match_spec():
    f = rope_frequencies(128)
    assert f.shape == (21,) and f.dtype == torch.float32
    expected = torch.tensor([1.0 / 10000 ** (j / 21) for j in range(21)], dtype=torch.float32)
    torch.testing.assert_close(f, expected, atol=0, rtol=1e-6)  # fp32 pow rounding


@pytest.mark.parametrize("head_dim", [128, 32])
def test_rope_sparse_matches_complex_formulation(head_dim):
    g = torch.Generator().manual_seed(1)
    coords = torch.cat([torch.zeros(50, 1, dtype=torch.int32),
                        torch.randint(0, 96, (50, 3), generator=g, dtype=torch.int32)], dim=1)
    st = SparseTensor(torch.zeros(50, 1), coords)
    cos, sin = sparse_rope(st, head_dim)
    x = torch.randn(50, 3, head_dim, generator=g)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.double(), _complex_rope(x, coords[:, 1:], head_dim), atol=2e-5, rtol=1e-5)
    assert sparse_rope(st.replace(torch.ones(50, 1)), head_dim)[0] is cos  # cached on the voxel set


def test_rope_dense_grid_matches_complex_formulation_and_leaves_tail_dims():
    g = torch.Generator().manual_seed(2)
    cos, sin = grid_rope((4, 5, 6), 128)
    pos = grid_positions((4, 5, 6))
    assert pos[:3].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2]]  # z fastest
    x = torch.randn(2, 120, 2, 128, generator=g)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.double(), _complex_rope(x, pos, 128), atol=2e-5, rtol=1e-5)
    assert torch.equal(out[..., 126:], x[..., 126:])  # dims 126-127 unrotated


def test_rope_axis_assignment():
    cos, _ = grid_rope((3, 3, 3), 128)
    pos = grid_positions((3, 3, 3))
    i = int(((pos == torch.tensor([2, 0, 0])).all(1)).nonzero())
    assert torch.all(cos[i, :21] != 1) and torch.all(cos[i, 21:] == 1)  # x rotates pairs 0-20 (dims 0-41)
    j = int(((pos == torch.tensor([0, 0, 2])).all(1)).nonzero())
    assert torch.all(cos[j, 42:63] != 1) and torch.all(cos[j, :42] == 1) and cos[j, 63] == 1


def test_rope_keeps_dtype_and_computes_in_fp32():
    x = torch.randn(2, 10, 2, 32).to(torch.bfloat16)
    cos, sin = grid_rope((1, 2, 5), 32)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, apply_rope(x.float(), cos, sin).to(torch.bfloat16), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- blocks (§4.2)
def test_timestep_embedding_cos_first():
    t = torch.tensor([0.0, 500.0, 1000.0])
    emb = timestep_embedding(t, 256)
    assert emb.shape == (3, 256) and emb.dtype == torch.float32
    k = torch.arange(128, dtype=torch.float64)
    freqs = torch.exp(-math.log(10000) * k / 128)
    args = t.double()[:, None] * freqs
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], 1), atol=1e-4, rtol=0)
    assert torch.all(emb[0, :128] == 1) and torch.all(emb[0, 128:] == 0)


def test_multihead_rms_norm_is_l2_times_gamma_sqrt_d():
    norm = MultiHeadRMSNorm(32, 2)
    with torch.no_grad():
        norm.gamma.copy_(torch.rand(2, 32) + 0.5)
    x = torch.randn(7, 2, 32)
    expected = x / x.norm(dim=-1, keepdim=True) * norm.gamma * math.sqrt(32)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(norm(torch.zeros(1, 2, 32)), torch.zeros(1, 2, 32))  # eps, not NaN
    xb = x.to(torch.bfloat16)
    out = norm(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (F.normalize(xb.float(), dim=-1) * norm.gamma * math.sqrt(32)).bfloat16())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_policy_low_precision_trunk_and_load_casts(dtype):
    _need_golden()
    model = _model("shape_slat_flow_model_512", dtype)  # fp32 checkpoint: the load hook casts the block linears
    low_dtype = getattr(torch, dtype)
    for name, p in model.named_parameters():
        low = name.startswith("blocks.") and any(s in name for s in ("to_qkv", "to_out", "to_q.", "to_kv", "mlp.mlp"))
        assert p.dtype == (low_dtype if low else torch.float32), name
    from safetensors.torch import load_file

    case = load_file(str(GOLDEN / "dit_shape_flow_512.safetensors"))
    x = SparseTensor(case["x.feats"], case["x.coords"])
    with torch.no_grad():
        v = model(x, case["t"], case["cond"]).feats
    assert v.dtype == torch.float32
    gold = case["output.v.feats"]
    assert float((v - gold).norm() / gold.norm()) < 0.05  # low-precision trunk: close to the fp32 golden


def test_rope_phases_key_is_dropped_and_unknown_args_rejected():
    _need_golden()
    from safetensors.torch import load_file

    base = _ckpt("sparse_structure_flow_model")
    cfg = json.loads(base.with_suffix(".json").read_text())
    cls = model_class(cfg["name"])
    sd = load_file(str(base.with_suffix(".safetensors")))
    sd["rope_phases"] = torch.polar(torch.ones(4096, 16), torch.zeros(4096, 16))
    with torch.device("meta"):
        model = cls(**cfg["args"])
    model.load_state_dict(sd, strict=True, assign=True)
    assert "rope_phases" not in model.state_dict()
    with pytest.raises(ValueError, match="unknown model args"):
        cls(**cfg["args"], bogus=1)
    with pytest.raises(ValueError, match="share_mod"):
        cls(**dict(cfg["args"], share_mod=False))
    with pytest.raises(ValueError, match="x \\[B, 8, 16, 16, 16\\]"):
        _model("sparse_structure_flow_model")(torch.zeros(1, 8, 8, 8, 8), torch.zeros(1), torch.zeros(1, 3, 32))
