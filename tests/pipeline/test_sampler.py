"""Flow-Euler sampler: golden runs, schedule, guidance interval, rescale std, cancellation, NaN, params (§7, §1.4)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from trellis2_core.conformance.case import load_case
from trellis2_core.conformance.cases_dit import run_sampler
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.loading import load_model
from trellis2_core.pipeline.sampler import SamplerParams, _sample_std, sample_flow_euler, timestep_pairs
from trellis2_core.sparse import SparseTensor

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden"
PIPELINE = GOLDEN / "tiny-pipeline"
SAMPLER_CASES = ["sampler_ss", "sampler_shape", "sampler_tex", "sampler_shape_cfg_norescale"]


@functools.lru_cache(maxsize=None)
def _model(key: str) -> torch.nn.Module:
    return load_model(PIPELINE, key)


@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_golden_sampler(name):
    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN}")
    case = load_case(GOLDEN, name, "sampler", _model)
    out = run_sampler(case)
    for key, gold in case.expected.items():
        if not key.startswith("output."):
            continue
        cand, tol = out[key], case.meta["tolerance"][key]
        assert cand.shape == gold.shape, f"{key}: {list(cand.shape)} vs {list(gold.shape)}"
        if tol == "exact":
            assert torch.equal(cand.to(gold.dtype), gold), key
            continue
        err = (cand.double() - gold.double()).abs()
        bad = int((err > tol["atol"] + tol["rtol"] * gold.double().abs()).sum())
        assert bad == 0, f"{name}/{key}: {bad} out of tolerance, max err {err.max():.3g}"


# ---------------------------------------------------------------------------------------------- helpers
def _params(**kw) -> SamplerParams:
    base = dict(steps=12, guidance_strength=7.5, guidance_rescale=0.0, guidance_interval=(0.6, 1.0), rescale_t=3.0)
    return SamplerParams(**{**base, **kw})


class _Fake:
    """A stand-in model: velocity = x·scale (+ NaN at a chosen call), records the conditioning it saw."""

    def __init__(self, nan_at: int | None = None) -> None:
        self.conds: list[torch.Tensor] = []
        self.nan_at = nan_at

    def __call__(self, x, t, cond, **extra):
        self.conds.append(cond)
        f = (x.feats if isinstance(x, SparseTensor) else x) * (0.5 + float(cond.flatten()[0]))
        if self.nan_at is not None and len(self.conds) - 1 == self.nan_at:
            f = f * float("nan")
        return x.replace(f) if isinstance(x, SparseTensor) else f


# ---------------------------------------------------------------------------------------------- schedule (§1.4)
def test_schedule_values_from_spec():
    r5 = [1.0, 0.9821, 0.9615, 0.9375, 0.9091, 0.875, 0.8333, 0.7813, 0.7143, 0.625, 0.5, 0.3125, 0.0]
    r3 = [1.0, 0.9706, 0.9375, 0.9, 0.8571, 0.8077, 0.75, 0.6818, 0.6, 0.5, 0.375, 0.2143, 0.0]
    for r, expected in ((5.0, r5), (3.0, r3)):
        pairs = timestep_pairs(12, r)
        ts = [a for a, _ in pairs] + [pairs[-1][1]]
        assert [round(t, 4) for t in ts] == expected
        assert all(pairs[i][1] == pairs[i + 1][0] for i in range(11))
    assert timestep_pairs(12, 3.0)[8][0] == 0.6  # exactly, in float64
    assert timestep_pairs(4, 1.0) == [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]


@pytest.mark.parametrize("rescale_t, strength, calls", [(5.0, 7.5, 22), (3.0, 7.5, 21), (3.0, 1.0, 12)])
def test_number_of_model_passes(rescale_t, strength, calls):
    cond = torch.ones(1, 3)
    res = sample_flow_euler(_Fake(), torch.randn(1, 4), cond, torch.zeros_like(cond),
                            _params(rescale_t=rescale_t, guidance_strength=strength), record_calls=True)
    assert len(res.calls) == calls


def test_guidance_interval_is_inclusive_on_both_ends():
    cond = torch.ones(1, 3)
    res = sample_flow_euler(_Fake(), torch.randn(1, 4), cond, torch.zeros_like(cond), _params(), record_calls=True)
    ts = [c.t_model for c in res.calls]
    assert ts[:2] == [1000.0, 1000.0]  # t = 1 = hi: guided
    assert [c.branch for c in res.calls if c.t_model == pytest.approx(600.0)] == [1, 0]  # t = 0.6 = lo: guided
    assert [c.branch for c in res.calls if c.t_model == pytest.approx(500.0)] == [1]


def test_cfg_strength_zero_uses_negative_only_and_needs_neg_cond():
    cond = torch.ones(1, 3)
    res = sample_flow_euler(_Fake(), torch.randn(1, 4), cond, torch.zeros_like(cond),
                            _params(guidance_strength=0.0, guidance_interval=(0.0, 1.0)), record_calls=True)
    assert {c.branch for c in res.calls} == {0}
    with pytest.raises(InputError, match="neg_cond"):
        sample_flow_euler(_Fake(), torch.randn(1, 4), cond, None, _params())


def test_euler_step_and_callback():
    x0 = torch.randn(2, 3)
    seen = []
    res = sample_flow_euler(lambda x, t, c: torch.zeros_like(x), x0, torch.ones(1, 1), None,
                            _params(steps=3, guidance_strength=1.0),
                            on_step=lambda i, n, x, p: seen.append((i, n, x.shape, p.shape)))
    assert torch.equal(res.samples, x0)  # zero velocity: nothing moves
    assert seen == [(0, 3, x0.shape, x0.shape), (1, 3, x0.shape, x0.shape), (2, 3, x0.shape, x0.shape)]


def test_batch1_cond_is_broadcast():
    fake = _Fake()
    sample_flow_euler(fake, torch.randn(2, 4), torch.ones(1, 3), None, _params(steps=2, guidance_strength=1.0))
    assert all(c.shape[0] == 2 for c in fake.conds)


# ---------------------------------------------------------------------------------------------- rescale std (§7)
def test_rescale_std_dense_unbiased_sparse_population():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 3, 4, 4, 4, generator=g)
    torch.testing.assert_close(_sample_std(dense).flatten(), dense.flatten(1).std(dim=1, unbiased=True))
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 1], [1, 0, 1, 1]], dtype=torch.int32)
    feats = torch.randn(5, 6, generator=g)
    std = _sample_std(SparseTensor(feats, coords))  # [N, 1]
    pop = [feats[:3].flatten().std(unbiased=False), feats[3:].flatten().std(unbiased=False)]
    torch.testing.assert_close(std[:, 0], torch.stack([pop[0]] * 3 + [pop[1]] * 2), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- control flow
def test_cancellation_between_steps():
    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 3

    steps = []
    with pytest.raises(CancelledError, match="step 4/12"):
        sample_flow_euler(_Fake(), torch.randn(1, 4), torch.ones(1, 3), torch.zeros(1, 3), _params(),
                          should_cancel=cancel, on_step=lambda i, n, x, p: steps.append(i), stage="shape")
    assert steps == [0, 1, 2]


def test_nan_is_detected_with_stage_and_step():
    with pytest.raises(InputError, match=r"texture: .*NaN.*step 3/12"):
        sample_flow_euler(_Fake(nan_at=2), torch.randn(1, 4), torch.ones(1, 3), None,
                          _params(guidance_strength=1.0), stage="texture")


# ---------------------------------------------------------------------------------------------- params
def test_params_from_pipeline_block_with_overrides():
    block = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
             "params": {"steps": 12, "guidance_strength": 7.5, "guidance_rescale": 0.7,
                        "guidance_interval": [0.6, 1.0], "rescale_t": 5.0}}
    p = SamplerParams.from_pipeline(block, {"steps": 20, "guidance_strength": 3})
    assert p == SamplerParams(20, 3.0, 0.7, (0.6, 1.0), 5.0, 1e-5)
    assert SamplerParams.from_pipeline({"name": "FlowEulerSampler", "params": {"steps": 3,
                                                                               "guidance_strength": 5}}
                                       ).guidance_strength == 1.0


@pytest.mark.parametrize("bad, match", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"guidance_interval": (0.9, 0.6)}, "lo <= hi"), ({"guidance_interval": (-0.1, 1.0)}, "lo <= hi"),
    ({"guidance_interval": (0.0, 1.5)}, "lo <= hi"), ({"guidance_interval": (0.5,)}, "two numbers"),
    ({"rescale_t": 0.0}, "rescale_t"), ({"rescale_t": -1.0}, "rescale_t"),
    ({"guidance_strength": float("nan")}, "finite"), ({"guidance_rescale": -0.1}, "guidance_rescale"),
    ({"sigma_min": 1.0}, "sigma_min"),
])
def test_bad_params_raise(bad, match):
    with pytest.raises(InputError, match=match):
        _params(**bad)


def test_bad_pipeline_blocks_raise():
    with pytest.raises(InputError, match="unsupported sampler"):
        SamplerParams.from_pipeline({"name": "DDIM", "params": {"steps": 2}})
    with pytest.raises(InputError, match="unknown sampler parameters"):
        SamplerParams.from_pipeline({"params": {"steps": 2}}, {"cfg_strength": 3})
