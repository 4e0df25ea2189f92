"""The background compilation of the fast path (pipeline/warmup.py): what it compiles is what the real models then
use (no second compilation), other threads run eagerly while it is in flight, and it never fails a run.

Dynamo traces for real here; the Inductor backend is replaced by ``backend="eager"`` (CPU tests)."""
from __future__ import annotations

import functools

import pytest
import torch

from trellis2_core.config import FastPathConfig
from trellis2_core.models import background_compile, model_class
from trellis2_core.pipeline import warmup
from trellis2_core.pipeline.sampler import SamplerParams
from trellis2_core.pipeline.stages import StageHooks, _sample
from trellis2_core.sparse import SparseTensor

_DIT = dict(model_channels=64, cond_channels=32, num_blocks=2, num_heads=2, mlp_ratio=4.0, pe_mode="rope",
            share_mod=True, qk_rms_norm=True, qk_rms_norm_cross=True, dtype="float32", initialization="scaled")
_SPECS = [warmup.FlowSpec("SparseStructureFlowModel", dict(_DIT, resolution=8, in_channels=8, out_channels=8)),
          warmup.FlowSpec("ElasticSLatFlowModel", dict(_DIT, resolution=16, in_channels=32, out_channels=32)),
          warmup.FlowSpec("ElasticSLatFlowModel", dict(_DIT, resolution=16, in_channels=64, out_channels=32))]
_SS = SamplerParams(4, 7.5, 0.7, (0.6, 1.0), 3.0)


class _CompileEverywhere(FastPathConfig):
    """Test double: compile on any device (the library compiles on CUDA only)."""

    def compile_on(self, device: object, dtype: object) -> bool:
        return self.compile_blocks


_FAST = _CompileEverywhere(cache_cross_kv=True, skip_uncond_cross_attn=True, batch_cfg=True, dense_tokens=True,
                           compile_blocks=True, fused_min_rows=300)


@pytest.fixture
def eager_dynamo(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def _graphs(counters) -> int:
    return int(counters["stats"]["unique_graphs"])


def _real_model(spec: warmup.FlowSpec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return model_class(spec.name)(**spec.args).eval().requires_grad_(False)


def _run_sparse(model, n: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coords = warmup._unique_coords(n, int(model.resolution), g)
    noise = SparseTensor(torch.randn((n, 32), generator=g), coords)
    cond = torch.randn((1, 20, 32), generator=g)
    with torch.no_grad():
        return _sample(model, noise, cond, _SS, StageHooks(), "test", fast=_FAST).samples.feats


def test_flow_specs_keep_one_per_block_configuration():
    picked = warmup.flow_specs(_SPECS + [warmup.FlowSpec("FlexiDualGridVaeDecoder", {"resolution": 64})])
    assert len(picked) == 2  # the dense structure flow and one sparse flow; the VAE is no DiT
    sparse = [s for s in picked if s.name == "ElasticSLatFlowModel"]
    assert sparse[0].args["in_channels"] == 32  # the shape flow (no concat_cond) stands for the texture flow


def test_warm_up_compiles_what_the_real_models_then_use(eager_dynamo):
    before = _graphs(eager_dynamo)
    warm = warmup.Warmup(warmup.flow_specs(_SPECS), _FAST, torch.device("cpu"), cond_tokens=20).start()
    assert warm.wait(300) and warm.error is None, warm.error
    compiled = _graphs(eager_dynamo) - before
    assert compiled >= 2  # batch 2 and batch 1 (on a GPU also plain × fused kernel sets)
    assert not background_compile.running()
    # real models (other instances, 2 blocks, other weights, other token counts) reuse those graphs
    _run_sparse(_real_model(_SPECS[1], 1), 40)
    _run_sparse(_real_model(_SPECS[1], 2), 320)
    assert _graphs(eager_dynamo) - before == compiled


def test_other_threads_run_eagerly_while_a_warm_up_is_in_flight(eager_dynamo):
    model = _real_model(_SPECS[1], 1)
    before = _graphs(eager_dynamo)
    background_compile.begin()
    try:
        assert background_compile.eager_here()
        eager = _run_sparse(model, 40)
        assert _graphs(eager_dynamo) == before  # nothing traced on this thread
    finally:
        with background_compile.worker():
            assert not background_compile.eager_here()  # the worker itself compiles
    assert not background_compile.running()
    compiled = _run_sparse(model, 40)
    assert _graphs(eager_dynamo) > before
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_a_failing_warm_up_is_logged_and_leaves_the_eager_path(eager_dynamo, caplog, monkeypatch):
    def boom(*_args, **_kwargs):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(warmup, "_sample", boom)
    warm = warmup.Warmup(warmup.flow_specs(_SPECS[:1]), _FAST, torch.device("cpu"), cond_tokens=20).start()
    assert warm.wait(60)
    assert isinstance(warm.error, RuntimeError)
    assert "compiling the fast path in the background failed" in caplog.text
    assert not background_compile.running()


def test_start_does_nothing_where_blocks_are_not_compiled():
    assert warmup.start(_SPECS, FastPathConfig.fast(), "cpu") is None  # the CPU runs blocks eagerly
    assert warmup.start(_SPECS, None, "cpu") is None
    assert warmup.start(_SPECS, FastPathConfig(), "cpu") is None
