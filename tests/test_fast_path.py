"""Fast-path switches (``trellis2_core.config.FastPathConfig``) against the reference path, on the CPU.

Every switch must give the same final latents as the plain path on the same noise (cosine ≥ 0.999, and in float32
agreement to rounding). The tiny golden models are used (float32); CUDA-only switches (compile, CUDA graphs, the
SDPA kernel choice) must be exact no-ops on the CPU, and the compiled block is checked with dynamo's eager backend.

The switch matrix samples 2 steps per stage (CI time): the structure stage's first step is guided and CFG-rescaled,
its second is plain (guidance interval [0.9, 1] on the warped times 1 and 0.83); the shape stage is guided at both
steps; the texture stage is unguided. Every fast-path code path runs, and a wrong one moves the final latents.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from pathlib import Path

import pytest
import torch

from trellis2_core.capabilities import DeviceTraits
from trellis2_core.config import FastPathConfig
from trellis2_core.errors import InputError
from trellis2_core.loading.config import Normalization
from trellis2_core.loading import load_model
from trellis2_core.models.blocks import CrossContext
from trellis2_core.pipeline.sampler import SamplerParams, sample_flow_euler
from trellis2_core.pipeline.stages import sample_material, sample_shape, sample_structure
from trellis2_core.sparse import SparseTensor

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
PIPELINE = GOLDEN / "tiny-pipeline"
SS = SamplerParams(2, 7.5, 0.7, (0.9, 1.0), 5.0)  # step 1 (t = 1) guided + rescaled, step 2 (t = 0.83) plain
SHAPE = SamplerParams(2, 7.5, 0.5, (0.6, 1.0), 3.0)  # both steps guided (t = 1, 0.75)
TEX = SamplerParams(2, 1.0, 0.0, (0.6, 0.9), 3.0)  # unguided
SS_OFFICIAL = SamplerParams(12, 7.5, 0.7, (0.6, 1.0), 5.0)  # pipeline.json's structure sampler (§1.4)
H200 = DeviceTraits("cuda", (9, 0), triton=True, cudnn=True, name="simulated H200")
NORM = Normalization((0.1,) * 32, (2.0,) * 32)

SWITCHES = {
    "cache_cross_kv": FastPathConfig(cache_cross_kv=True),
    "skip_uncond_cross_attn": FastPathConfig(skip_uncond_cross_attn=True),
    "batch_cfg": FastPathConfig(batch_cfg=True),
    "dense_tokens": FastPathConfig(dense_tokens=True),
    "skip+batch (sparse, no dense view)": FastPathConfig(skip_uncond_cross_attn=True, batch_cfg=True),
    "compile_blocks (CPU: off)": FastPathConfig(compile_blocks=True),
    "cuda_graphs (CPU: off)": FastPathConfig(cuda_graphs=True),
    "attention_kernel (CPU: off)": FastPathConfig(attention_kernel="flash"),
    "fused_mlp": FastPathConfig(fused_mlp=True),
    "fused_qk_norm_rope (CPU: its reference)": FastPathConfig(fused_qk_norm_rope=True, fused_min_rows=0),
    "fused_norm_modulate (CPU: its reference)": FastPathConfig(fused_norm_modulate=True, fused_min_rows=0),
    "attention_kernel triton (CPU: its reference)": FastPathConfig(attention_kernel="triton"),
    "attention_kernel fa4 (CPU: SDPA)": FastPathConfig(attention_kernel="fa4", fused_min_rows=0),
    "all (fast)": dataclasses.replace(FastPathConfig.fast(), fused_min_rows=0),
}


@functools.lru_cache(maxsize=None)
def _model(key: str) -> torch.nn.Module:
    if not (PIPELINE / "pipeline.json").is_file():
        pytest.skip(f"golden tiny pipeline not found at {PIPELINE}")
    return load_model(PIPELINE, key)


def _cond(m: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, m, 32, generator=torch.Generator().manual_seed(seed))


def _coords(n: int = 250, res: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.unique(torch.randint(0, res, (n, 3), generator=g), dim=0)
    return torch.cat([torch.zeros_like(xyz[:, :1]), xyz], dim=1).to(torch.int32)


def _check(ref: torch.Tensor, out: torch.Tensor, what: str) -> None:
    a, b = ref.double().flatten(), out.double().flatten()
    cos = float(a @ b / (a.norm() * b.norm()))
    assert cos >= 0.999, f"{what}: cosine {cos}"
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@functools.lru_cache(maxsize=None)
def _run_structure(fast: FastPathConfig | None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    st = sample_structure(_model("sparse_structure_flow_model"), _model("sparse_structure_decoder"), _cond(), SS, 32,
                          gen, fast=fast)
    return st.latent


@functools.lru_cache(maxsize=None)
def _run_shape_and_tex(fast: FastPathConfig | None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    shape = sample_shape(_model("shape_slat_flow_model_512"), _cond(), _coords(), SHAPE, NORM, 512, gen, fast=fast)
    mat = sample_material(_model("tex_slat_flow_model_512"), _cond(), shape.slat, TEX, NORM, NORM, gen, fast=fast)
    return shape.slat.feats, mat.slat.feats


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_matches_reference_dense_structure(name):
    _check(_run_structure(None), _run_structure(SWITCHES[name]), f"SS latent with {name}")


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_matches_reference_sparse_shape_and_texture(name):
    ref_shape, ref_tex = _run_shape_and_tex(None)
    shape, tex = _run_shape_and_tex(SWITCHES[name])
    _check(ref_shape, shape, f"shape latent with {name}")
    _check(ref_tex, tex, f"texture latent with {name}")


def test_zero_context_constant_equals_cross_attention_on_zeros():
    model = _model("shape_slat_flow_model_512")
    block = model.blocks[1]
    x = torch.randn(2, 17, model.model_channels)
    zeros = torch.zeros(2, 9, model.cond_channels)
    with torch.no_grad():
        full = block.cross_attn(block.norm2(x), zeros)
        const = block.cross_attn.zero_context_output()
    torch.testing.assert_close(full, const.expand_as(full), atol=1e-5, rtol=1e-5)


def test_prepare_context_kinds_and_pairing():
    model = _model("shape_slat_flow_model_512")
    with torch.no_grad():
        live = model.prepare_context(_cond(), cache_kv=True)
        zero = model.prepare_context(torch.zeros(1, 20, 32), zero_const=True)
        nonzero = model.prepare_context(_cond(), zero_const=True, cache_kv=False)
    assert live.n_live == 1 and live.kv is not None and len(live.kv) == len(model.blocks) and live.const is None
    assert zero.n_live == 0 and zero.kv is None and len(zero.const) == len(model.blocks)
    assert nonzero.n_live == 1 and nonzero.kv is None and nonzero.const is None  # not all zero: no shortcut
    pair = live.pair(zero)
    assert pair.shape[0] == 2 and pair.n_live == 1 and pair.kv is live.kv and pair.const is zero.const
    assert zero.pair(live) is None  # zero-context elements must come last
    both = live.pair(live)
    assert both.n_live == 2 and both.kv[0][0].shape[0] == 2


def _toy_velocity(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **_: object) -> torch.Tensor:
    """A cheap stand-in model whose output depends on each batch element's time and condition (so a swapped or
    mis-paired CFG branch changes the result)."""
    per_sample = (cond.mean(dim=(1, 2)) + 0.3 * cond[:, 0, 0]) * t / 1000
    return 0.5 * x + per_sample.view(-1, *([1] * (x.dim() - 1)))


def test_batched_cfg_records_the_official_call_sequence():
    """Batched CFG makes the official call sequence over the full 12-step structure sampler (sampler logic only: a
    stand-in model; the real models' latents are compared in the switch matrix)."""
    noise = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    cond = _cond()
    ref = sample_flow_euler(_toy_velocity, noise, cond, torch.zeros_like(cond), SS_OFFICIAL, record_calls=True)
    out = sample_flow_euler(_toy_velocity, noise, cond, torch.zeros_like(cond), SS_OFFICIAL, record_calls=True,
                            fast=FastPathConfig(batch_cfg=True))
    assert out.calls == ref.calls and len(ref.calls) == 22  # §1.4: 10 CFG steps + 2 plain
    assert [c.branch for c in ref.calls[:4]] == [1, 0, 1, 0] and [c.branch for c in ref.calls[-2:]] == [1, 1]
    _check(ref.samples, out.samples, "SS sampler with batch_cfg")


def test_dense_view_only_for_equal_voxel_sets():
    """Two samples on different voxels have no dense view: the sparse path runs, results unchanged."""
    model = _model("shape_slat_flow_model_512")
    a, b = _coords(120, seed=7), _coords(120, seed=8)
    n = min(a.shape[0], b.shape[0])
    b = b[:n].clone()
    b[:, 0] = 1
    coords = torch.cat([a[:n], b])
    x = SparseTensor(torch.randn(coords.shape[0], 32, generator=torch.Generator().manual_seed(9)), coords)
    t, cond = torch.tensor([700.0, 700.0]), _cond().expand(2, -1, -1)
    with torch.no_grad():
        ref = model(x, t, cond)
        out = model(x, t, cond, fast=FastPathConfig(dense_tokens=True))
    assert x.cache.get_or_create("dense_view", lambda: None) is False
    torch.testing.assert_close(out.feats, ref.feats)


def test_cuda_only_switches_are_off_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    fast = FastPathConfig.fast()
    assert not fast.compile_on(cpu, torch.float32) and not dataclasses.replace(fast, cuda_graphs=True).graphs_on(cpu)
    assert fast.compile_on(H200, torch.bfloat16) and dataclasses.replace(fast, cuda_graphs=True).graphs_on(H200)
    with fast.attention_context(cpu):
        pass

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile must not be called off CUDA")

    monkeypatch.setattr(torch, "compile", no_compile)
    model = _model("sparse_structure_flow_model")
    x = torch.randn(1, 8, 16, 16, 16)
    with torch.no_grad():
        model(x, torch.tensor([500.0]), _cond(), fast=fast)


def test_unknown_attention_kernel_is_rejected():
    with pytest.raises(InputError, match="attention_kernel"):
        FastPathConfig(attention_kernel="fa3")


class _CompileEverywhere(FastPathConfig):
    """Test double: compile on any device (the library compiles on CUDA only)."""

    def compile_on(self, device: object, dtype: object) -> bool:
        return self.compile_blocks


def test_compiled_block_matches_eager(monkeypatch):
    """The compiled block path (dynamo tracing, eager backend) gives the eager results, dense and sparse, B=1 and the
    batched CFG pair with a zero-context constant."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    fast = _CompileEverywhere(cache_cross_kv=True, skip_uncond_cross_attn=True, compile_blocks=True, fused_mlp=True,
                              fused_qk_norm_rope=True, fused_norm_modulate=True, fused_min_rows=0,
                              attention_kernel="triton")
    cond = _cond()
    g = torch.Generator().manual_seed(11)
    ss, shape = _model("sparse_structure_flow_model"), _model("shape_slat_flow_model_512")
    coords = _coords(200)
    xs = SparseTensor(torch.randn(coords.shape[0], 32, generator=g), coords)
    pair_coords = torch.cat([coords, coords + torch.tensor([1, 0, 0, 0], dtype=torch.int32)])
    xs2 = SparseTensor(torch.cat([xs.feats, xs.feats]), pair_coords)
    xd = torch.randn(1, 8, 16, 16, 16, generator=g)
    t1, t2 = torch.tensor([800.0]), torch.tensor([800.0, 800.0])
    with torch.no_grad():
        for model, x, x2 in ((ss, xd, torch.cat([xd, xd])), (shape, xs, xs2)):
            live = model.prepare_context(cond, cache_kv=True)
            pair = live.pair(model.prepare_context(torch.zeros_like(cond), zero_const=True))
            ref1 = model(x, t1, cond)
            ref2 = model(x2, t2, torch.cat([cond, torch.zeros_like(cond)]))
            out1, out2 = model(x, t1, live, fast=fast), model(x2, t2, pair, fast=fast)
            f = (lambda v: v.feats) if isinstance(x, SparseTensor) else (lambda v: v)
            torch.testing.assert_close(f(out1), f(ref1), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(f(out2), f(ref2), atol=1e-4, rtol=1e-4)
    assert isinstance(pair, CrossContext)


# ------------------------------------------------------------------------------------------------- fp8 block GEMMs
# fp8_linear is approximate (every block GEMM is off by a few percent), so it is not in SWITCHES: its gate is a final
# latent cosine >= 0.99 against the plain path on the same noise (measured on these tiny models: ~0.999), and it must
# visibly change the result (else the fp8 path did not run).
FP8_GATE = 0.99


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def test_fused_elementwise_kernels_only_for_large_calls():
    """The fused q/k norm + RoPE and norm + modulation ops cost host time per call: small (launch-bound) model calls
    keep the compiled plain ops, large ones use the kernels; the other choices do not depend on the size."""
    fast = dataclasses.replace(FastPathConfig.fast(), attention_kernel="cudnn")

    def kernels(config: FastPathConfig, rows: int):
        return config.block_kernels(rows, H200, torch.bfloat16, 128)

    small, large = kernels(fast, fast.fused_min_rows - 1), kernels(fast, fast.fused_min_rows)
    assert not small.fused_qk and not small.fused_norm and small.fused_mlp
    assert large.fused_qk and large.fused_norm and large.fused_mlp and large.attention == small.attention == "auto"
    assert not kernels(FastPathConfig(), 10 ** 6).fused_qk
    fa4 = dataclasses.replace(fast, attention_kernel="fa4")  # FA4's host cost per call: long sequences only
    assert kernels(fa4, fast.fused_min_rows - 1).attention == "auto"
    assert kernels(fa4, fast.fused_min_rows).attention == "fa4"


@pytest.mark.parametrize("installed, kernel", [(True, "fa4"), (False, "cudnn")])
def test_fast_uses_flash_attention_4_only_when_installed(monkeypatch, installed, kernel):
    attention_module = importlib.import_module("trellis2_core.sparse.attention")
    monkeypatch.setattr(attention_module, "fa4_available", lambda: installed)
    assert FastPathConfig.fast().attention_kernel == kernel


def test_fp8_linear_config():
    assert not FastPathConfig().fp8_linear and not FastPathConfig.reference().fp8_linear
    assert not FastPathConfig.fast().fp8_linear
    assert FastPathConfig.fast(fp8_linear=True) == dataclasses.replace(FastPathConfig.fast(), fp8_linear=True)


@pytest.mark.parametrize("fast", [FastPathConfig(fp8_linear=True), FastPathConfig.fast(fp8_linear=True)],
                         ids=["fp8 alone", "fast + fp8"])
def test_fp8_linear_latents_stay_close(fast):
    base = dataclasses.replace(fast, fp8_linear=False)
    pairs = [("SS latent", _run_structure(base), _run_structure(fast))]
    pairs += list(zip(("shape latent", "texture latent"), _run_shape_and_tex(base), _run_shape_and_tex(fast)))
    for what, ref, out in pairs:
        cos = _cosine(ref, out)
        assert FP8_GATE <= cos < 1 - 1e-7, f"{what} with fp8 GEMMs: cosine {cos}"
        assert not torch.equal(ref, out), what


def test_fp8_switch_keeps_parameters_and_switches_back_exactly():
    from trellis2_core.models.fp8 import Fp8Linear, fp8_block_linears

    model = _model("shape_slat_flow_model_512")
    keys, params = list(model.state_dict()), dict(model.named_parameters())
    classes = {name: type(m) for name, m in model.named_modules()}
    coords = _coords(150)
    x = SparseTensor(torch.randn(coords.shape[0], 32, generator=torch.Generator().manual_seed(12)), coords)
    t, cond = torch.tensor([600.0]), _cond()
    with torch.no_grad():
        ref = model(x, t, cond).feats
        with fp8_block_linears(model) as n:
            assert n == 6 * len(model.blocks)
            switched = {name for name, m in model.named_modules() if type(m) is Fp8Linear}
            assert list(model.state_dict()) == keys
            assert all(p is params[name] for name, p in model.named_parameters())
            out = model(x, t, cond).feats
            with fp8_block_linears(model) as inner:  # nested: nothing left to switch, and nothing undone
                assert inner == 0
            assert all(type(m) is Fp8Linear for name, m in model.named_modules() if name in switched)
        assert {name for name, m in model.named_modules() if type(m) is not classes[name]} == set()
        assert torch.equal(model(x, t, cond).feats, ref)
        with pytest.raises(RuntimeError, match="boom"):
            with fp8_block_linears(model):
                raise RuntimeError("boom")
        assert all(type(m) is classes[name] for name, m in model.named_modules())
    suffixes = {name.split(".", 2)[2] for name in switched}
    assert suffixes == {"self_attn.to_qkv", "self_attn.to_out", "cross_attn.to_q", "cross_attn.to_out", "mlp.mlp.0",
                        "mlp.mlp.2"}
    assert _cosine(ref, out) >= FP8_GATE and not torch.equal(ref, out)


def test_fp8_compiled_block_follows_the_switch(monkeypatch):
    """The compiled block (dynamo, eager backend) runs the fp8 forward inside the switch and the plain one after it:
    dynamo must not reuse the graph traced for the other Linear class."""
    from trellis2_core.models.fp8 import fp8_block_linears

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    model = _model("sparse_structure_flow_model")
    fast = _CompileEverywhere(compile_blocks=True)
    x = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(13))
    t, cond = torch.tensor([900.0]), _cond()
    with torch.no_grad():
        plain = model(x, t, cond)
        with fp8_block_linears(model):
            eager_fp8 = model(x, t, cond)
            compiled_fp8 = model(x, t, cond, fast=fast)
        compiled_plain = model(x, t, cond, fast=fast)
    assert "_compiled_block_step" in model.__dict__
    torch.testing.assert_close(compiled_fp8, eager_fp8, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_plain, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eager_fp8, plain, atol=1e-4, rtol=1e-4)


def test_with_attention_checks_flash_attention_4_up_front(monkeypatch):
    from trellis2_core.errors import BackendError
    attention_module = importlib.import_module("trellis2_core.sparse.attention")
    base = FastPathConfig.fast()
    assert base.with_attention("auto") is base and base.with_attention(None) is base
    assert base.with_attention("flash") == dataclasses.replace(base, attention_kernel="flash")
    assert base.with_attention("flash").attention_explicit  # the user's choice: its fallbacks are warnings
    assert not base.attention_explicit  # the preset's own choice: its fallbacks are logged at info level
    with pytest.raises(ValueError, match="attention_kernel"):
        base.with_attention("fa3")
    monkeypatch.setattr(attention_module, "fa4_available", lambda: False)
    with pytest.raises(BackendError, match=r"install\.py --fa4"):
        base.with_attention("fa4")
    monkeypatch.setattr(attention_module, "fa4_available", lambda: True)
    assert base.with_attention("fa4").attention_kernel == "fa4"


def test_global_module_hooks_are_reported_once_when_blocks_compile(monkeypatch, caplog):
    """Global module hooks make torch.compile recompile the block whenever they change: the user is told which."""
    import logging

    from trellis2_core import capabilities

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    monkeypatch.setattr(capabilities, "_NOTED", set())
    model = _model("sparse_structure_flow_model")
    fast = _CompileEverywhere(compile_blocks=True)
    x = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        with caplog.at_level(logging.INFO), torch.no_grad():
            model(x, torch.tensor([500.0]), _cond(), fast=fast)
            model(x, torch.tensor([400.0]), _cond(), fast=fast)
    finally:
        handle.remove()
    warnings = [r for r in caplog.records if "global PyTorch module hooks" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "_global_forward_hooks" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO), torch.no_grad():
        model(x, torch.tensor([300.0]), _cond(), fast=fast)
    assert not [r for r in caplog.records if "global PyTorch module hooks" in r.getMessage()]


def test_speed_choices_map_to_configs():
    """The Load node's ``speed`` and the CLI's ``--speed`` share FastPathConfig.for_speed."""
    from trellis2_core.config import SPEEDS
    from trellis2_core.errors import InputError

    assert SPEEDS == ("fast", "fast_no_compile", "eager")
    assert FastPathConfig.for_speed("fast") == FastPathConfig.fast()
    quick = FastPathConfig.for_speed("fast_no_compile")
    assert quick == dataclasses.replace(FastPathConfig.fast(), compile_blocks=False)
    assert FastPathConfig.for_speed("eager") == FastPathConfig()
    with pytest.raises(InputError, match="fast, fast_no_compile, eager"):
        FastPathConfig.for_speed("turbo")
