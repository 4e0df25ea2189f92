"""The fast path's device decisions (trellis2_core.capabilities), on simulated devices.

Every fused or compiled choice must be one that exists on the device for the dtype and head size, with a fallback
that always exists; the default ``FastPathConfig.fast()`` must never leave SDPA without a kernel. The facts checked
here are PyTorch 2.13's own (``sdp_utils.cpp``; Inductor's Triton minimum), listed in the module's docstring.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend

from trellis2_core import capabilities as caps
from trellis2_core.capabilities import DeviceTraits
from trellis2_core.config import BlockKernels, FastPathConfig

DEVICES = {
    "sm37 (K80)": DeviceTraits("cuda", (3, 7), triton=True, cudnn=True, name="K80"),
    "sm61 (P100-class)": DeviceTraits("cuda", (6, 1), triton=True, cudnn=True, name="GTX 1080"),
    "sm75 (T4)": DeviceTraits("cuda", (7, 5), triton=True, cudnn=True, name="T4"),
    "sm80 (A100)": DeviceTraits("cuda", (8, 0), triton=True, cudnn=True, name="A100"),
    "sm86 (RTX 3090)": DeviceTraits("cuda", (8, 6), triton=True, cudnn=True, name="RTX 3090"),
    "sm89 (L4)": DeviceTraits("cuda", (8, 9), triton=True, cudnn=True, name="L4"),
    "sm90 (H200)": DeviceTraits("cuda", (9, 0), triton=True, cudnn=True, name="H200"),
    "sm90 without Triton or cuDNN": DeviceTraits("cuda", (9, 0), name="H200, bare"),
    "rocm": DeviceTraits("rocm", triton=True, name="gfx942"),
    "mps": DeviceTraits("mps"),
    "cpu": DeviceTraits("cpu"),
}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEADS = (64, 128, 72, 160, 256)
GRID = list(itertools.product(DEVICES, DTYPES, HEADS))
H200, T4 = DEVICES["sm90 (H200)"], DEVICES["sm75 (T4)"]
FAST = dataclasses.replace(FastPathConfig.fast(), attention_kernel="cudnn")  # the preset without FA4 installed
FAST_FA4 = dataclasses.replace(FAST, attention_kernel="fa4")


def _cap(t: DeviceTraits) -> tuple[int, int]:
    return t.capability if t.kind == "cuda" else (99, 0)


@pytest.mark.parametrize("device, dtype, head", GRID, ids=[f"{d}-{str(t)[6:]}-d{h}" for d, t, h in GRID])
def test_every_choice_exists_on_the_device(device, dtype, head):
    t = DEVICES[device]
    runnable = caps.sdpa_kernels(t, dtype, head)
    assert runnable[-1] == "math"
    for kernel in ("cudnn", "flash", "fa4", "efficient", "math"):
        order = caps.sdpa_order(t, kernel)
        if order is None:  # PyTorch's own choice, which includes math
            assert t.kind != "cuda"
            continue
        assert order[-1] == "math" and any(name in runnable for name in order), (kernel, order, runnable)
        if dtype == torch.float32 and kernel != "math":
            assert "efficient" in order or order == ("math",)  # never cuDNN/flash alone for fp32
    bf16_old = dtype == torch.bfloat16 and t.kind == "cuda" and t.capability < (8, 0)
    for fast in (FAST, FAST_FA4, dataclasses.replace(FAST, attention_kernel="triton")):
        for rows in (1, 10 ** 6):
            k = fast.block_kernels(rows, t, dtype, head)
            if k.attention == "fa4":
                assert t.kind == "cuda" and t.capability >= (9, 0) and dtype != torch.float32 and head <= 256
            if k.attention == "triton" and t.gpu:
                assert t.triton and not bf16_old and head in (64, 128, 256)
            if (k.fused_qk or k.fused_norm) and t.gpu:
                assert t.triton and _cap(t) >= (7, 0) and not bf16_old
            if k.fused_mlp and t.gpu:
                assert t.kind == "cuda" and dtype != torch.float32 and not bf16_old
    if FAST.compile_on(t, dtype):
        assert t.gpu and t.triton and _cap(t) >= (7, 0) and not bf16_old
    if caps.fa4_runs(t, dtype, head):
        assert t.kind == "cuda" and t.capability >= (9, 0) and dtype != torch.float32
    if caps.fp8_runs(t):
        assert t.kind == "cpu" or (t.kind == "cuda" and t.capability >= (8, 9))


#: (device, dtype, head) → the SDPA kernels that can run it, as PyTorch 2.13 checks them
SDPA_FACTS = [
    ("sm90 (H200)", torch.bfloat16, 128, ("cudnn", "flash", "efficient", "math")),
    ("sm90 (H200)", torch.float32, 128, ("efficient", "math")),
    ("sm90 (H200)", torch.float16, 72, ("cudnn", "flash", "efficient", "math")),
    ("sm90 (H200)", torch.bfloat16, 160, ("flash", "efficient", "math")),  # cuDNN: ≤ 128 (256 not relied on)
    ("sm90 without Triton or cuDNN", torch.bfloat16, 128, ("flash", "efficient", "math")),
    ("sm86 (RTX 3090)", torch.float16, 256, ("flash", "efficient", "math")),
    ("sm80 (A100)", torch.float32, 72, ("efficient", "math")),
    ("sm75 (T4)", torch.float16, 64, ("efficient", "math")),  # no cuDNN / flash SDPA before sm80
    ("sm75 (T4)", torch.float32, 128, ("efficient", "math")),
    ("sm75 (T4)", torch.bfloat16, 128, ("math",)),  # memory-efficient bf16 needs sm80
    ("sm61 (P100-class)", torch.float16, 64, ("efficient", "math")),
    ("sm37 (K80)", torch.float16, 64, ("math",)),  # memory-efficient needs sm50
    ("rocm", torch.bfloat16, 128, ("math",)),  # AOTriton kernels: PyTorch's own choice
    ("cpu", torch.float32, 64, ("math",)),
]


@pytest.mark.parametrize("device, dtype, head, expected", SDPA_FACTS)
def test_sdpa_kernels_follow_pytorchs_checks(device, dtype, head, expected):
    assert caps.sdpa_kernels(DEVICES[device], dtype, head) == expected


def test_sdpa_order_keeps_preferred_kernels_first_and_a_fallback_last():
    assert caps.sdpa_order(H200, "cudnn") == ("cudnn", "flash", "efficient", "math")
    assert caps.sdpa_order(H200, "fa4") == ("cudnn", "flash", "efficient", "math")
    assert caps.sdpa_order(H200, "flash") == ("flash", "efficient", "math")
    assert caps.sdpa_order(H200, "efficient") == ("efficient", "math")
    assert caps.sdpa_order(H200, "math") == ("math",)
    assert caps.sdpa_order(H200, "default") is None and caps.sdpa_order(H200, "triton") is None
    assert caps.sdpa_order(T4, "cudnn") == ("efficient", "math")
    assert caps.sdpa_order(DEVICES["sm37 (K80)"], "cudnn") == ("math",)
    assert caps.sdpa_order(DEVICES["sm90 without Triton or cuDNN"], "cudnn") == ("flash", "efficient", "math")
    for kind in ("rocm", "mps", "cpu"):
        assert caps.sdpa_order(DEVICES[kind], "cudnn") is None
    disabled = frozenset({"cudnn", "flash"})  # torch.backends.cuda.enable_{cudnn,flash}_sdp(False)
    assert caps.sdpa_order(H200, "cudnn", disabled) == ("efficient", "math")
    assert caps.sdpa_order(H200, "flash", frozenset({"flash", "efficient", "math"})) == ("math",)


#: (device, dtype) → (Triton kernels / compile, fused MLP epilogue)
TRITON_FACTS = [
    ("sm90 (H200)", torch.bfloat16, True, True),
    ("sm90 (H200)", torch.float32, True, False),
    ("sm90 without Triton or cuDNN", torch.bfloat16, False, True),
    ("sm86 (RTX 3090)", torch.float16, True, True),
    ("sm75 (T4)", torch.float16, True, True),
    ("sm75 (T4)", torch.bfloat16, False, False),  # bf16 is not native before sm80
    ("sm75 (T4)", torch.float32, True, False),
    ("sm61 (P100-class)", torch.float16, False, True),  # Triton needs compute capability 7.0
    ("rocm", torch.bfloat16, True, False),
    ("mps", torch.float16, False, False),
    ("cpu", torch.float32, False, False),
]


@pytest.mark.parametrize("device, dtype, triton, mlp", TRITON_FACTS)
def test_triton_compile_and_epilogue_facts(device, dtype, triton, mlp):
    t = DEVICES[device]
    assert caps.triton_runs(t, dtype) is triton and caps.compile_runs(t, dtype) is triton
    assert caps.fused_mlp_runs(t, dtype) is mlp
    assert FAST.compile_on(t, dtype) is triton


def test_fa4_fp8_and_graph_facts():
    for dtype, head, ok in ((torch.bfloat16, 128, True), (torch.float16, 72, True), (torch.float32, 128, False),
                            (torch.bfloat16, 260, False), (torch.bfloat16, 100, False)):
        assert caps.fa4_runs(H200, dtype, head) is ok, (dtype, head)
    assert not caps.fa4_runs(DEVICES["sm89 (L4)"], torch.bfloat16, 128)
    assert caps.flash_attn_runs(DEVICES["sm80 (A100)"], torch.bfloat16, 128)  # FlashAttention-2 from sm80
    assert not caps.flash_attn_runs(T4, torch.float16, 64) and not caps.flash_attn_runs(H200, torch.float32, 64)
    assert [caps.fp8_runs(DEVICES[d]) for d in ("sm86 (RTX 3090)", "sm89 (L4)", "sm90 (H200)", "rocm", "mps", "cpu")
            ] == [False, True, True, False, False, True]
    assert [caps.graphs_run(DEVICES[d]) for d in ("sm75 (T4)", "rocm", "mps", "cpu")] == [True, True, False, False]


def test_h200_bf16_keeps_the_measured_fast_configuration():
    """The fast path on an H100/H200 in bf16 (head size 128) is exactly the measured one."""
    for fast, big_attention in ((FAST, "auto"), (FAST_FA4, "fa4")):
        assert fast.block_kernels(fast.fused_min_rows, H200, torch.bfloat16, 128) == \
            BlockKernels(big_attention, fused_mlp=True, fused_qk=True, fused_norm=True)
        assert fast.block_kernels(fast.fused_min_rows - 1, H200, torch.bfloat16, 128) == \
            BlockKernels("auto", fused_mlp=True, fused_qk=False, fused_norm=False)
        assert fast.compile_on(H200, torch.bfloat16) and not fast.graphs_on(H200)
    assert caps.sdpa_order(H200, FAST.attention_kernel)[:2] == ("cudnn", "flash")


def test_old_gpus_and_bf16_fall_back_to_plain_ops():
    big = FAST.fused_min_rows
    assert FAST.block_kernels(big, T4, torch.bfloat16, 128) == BlockKernels("auto", False, False, False)
    assert FAST.block_kernels(big, T4, torch.float16, 128) == BlockKernels("auto", True, True, True)
    assert FAST_FA4.block_kernels(big, DEVICES["sm86 (RTX 3090)"], torch.bfloat16, 128).attention == "auto"
    assert FAST_FA4.block_kernels(big, H200, torch.float32, 128) == BlockKernels("auto", False, True, True)
    triton = dataclasses.replace(FAST, attention_kernel="triton")
    assert triton.block_kernels(big, H200, torch.bfloat16, 128).attention == "triton"
    assert triton.block_kernels(big, H200, torch.bfloat16, 72).attention == "auto"  # no kernel for head size 72
    assert triton.block_kernels(big, T4, torch.bfloat16, 128).attention == "auto"
    assert triton.block_kernels(big, DEVICES["cpu"], torch.float32, 72).attention == "triton"  # its reference
    rocm = DEVICES["rocm"]
    assert FAST.block_kernels(big, rocm, torch.bfloat16, 128) == BlockKernels("auto", False, True, True)
    assert FAST.block_kernels(big, DEVICES["mps"], torch.float16, 128) == BlockKernels("auto", True, True, True)


def _sdpa_state() -> tuple[bool, bool, bool, bool, list[int]]:
    b = torch.backends.cuda
    return (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(),
            list(torch._C._get_sdp_priority_order()))


def test_attention_context_sets_pytorchs_sdpa_order():
    """The context really configures PyTorch's SDPA dispatch (global flags and priority), and respects kernels the
    user switched off globally."""
    before = _sdpa_state()
    with FAST.attention_context(H200):
        cudnn, flash, efficient, math, order = _sdpa_state()
        assert cudnn and flash and efficient and math
        assert order[:4] == [int(b) for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                              SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)]
    assert _sdpa_state() == before
    with FAST.attention_context(T4):
        assert _sdpa_state()[:4] == (False, False, True, True)
    try:
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.enable_flash_sdp(False)
        with FAST.attention_context(H200):
            assert _sdpa_state()[:4] == (False, False, True, True)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before[0])
        torch.backends.cuda.enable_flash_sdp(before[1])
    assert _sdpa_state() == before
    with FAST.attention_context(DEVICES["rocm"]):
        assert _sdpa_state() == before


def test_explicit_kernels_warn_and_presets_inform(caplog, monkeypatch):
    monkeypatch.setattr(caps, "_NOTED", set())
    caplog.set_level(logging.INFO, logger="trellis2_core")
    explicit = FAST.with_attention("cudnn")
    with explicit.attention_context(T4):
        pass
    with explicit.attention_context(T4):  # once per message
        pass
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "cudnn" in warned[0].getMessage() and "efficient / math" in warned[0].getMessage()
    caplog.clear()
    FAST.block_kernels(10, H200, torch.float32, 64)  # the preset's cuDNN preference has no fp32 kernel
    assert caplog.records and all(r.levelno == logging.INFO for r in caplog.records)
    assert "efficient" in caplog.records[0].getMessage()


def test_device_traits_of_this_machine():
    t = caps.device_traits("cpu")
    assert t == DeviceTraits("cpu", name="cpu") and not t.gpu
    assert caps.describe(T4, torch.bfloat16, 128)["compile"] is False


# ----------------------------------------------------------------------------- a whole model call on a fake device
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


@functools.lru_cache(maxsize=None)
def _ss_model() -> torch.nn.Module:
    pipeline = GOLDEN / "tiny-pipeline"
    if not (pipeline / "pipeline.json").is_file():
        pytest.skip(f"golden tiny pipeline not found at {pipeline}")
    from trellis2_core.loading import load_model

    return load_model(pipeline, "sparse_structure_flow_model", dtype_override=torch.bfloat16)


def test_simulated_t4_bf16_sampling_runs_the_fallbacks(monkeypatch):
    """The default fast path on a (simulated) T4 with a bf16 model: no compile, no Triton kernels, no cuBLASLt
    epilogue, SDPA left with memory-efficient/math; the sampled latents match the plain path."""
    from trellis2_core.pipeline.sampler import SamplerParams, sample_flow_euler

    model = _ss_model()
    monkeypatch.setattr(caps, "_resolve", lambda device_type, index: T4)  # every device is a T4 now
    seen: list[BlockKernels] = []
    real = FastPathConfig.block_kernels
    monkeypatch.setattr(FastPathConfig, "block_kernels",
                        lambda self, *a: seen.append(real(self, *a)) or seen[-1])

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile must not be used for bf16 blocks before sm80")

    monkeypatch.setattr(torch, "compile", no_compile)
    fast = dataclasses.replace(FastPathConfig.fast(), fused_min_rows=0)
    params = SamplerParams(2, 3.0, 0.0, (0.0, 1.0), 1.0)
    noise = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 20, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sample_flow_euler(model, noise, cond, torch.zeros_like(cond), params).samples
        with fast.attention_context(torch.device("cpu")):
            assert _sdpa_state()[:4] == (False, False, True, True)
            out = sample_flow_euler(model, noise, cond, torch.zeros_like(cond), params, fast=fast).samples
    assert seen and set(seen) == {BlockKernels("auto", False, False, False)}
    a, b = ref.double().flatten(), out.double().flatten()
    assert float(a @ b / (a.norm() * b.norm())) >= 0.999


def test_fp8_is_not_switched_on_gpus_without_fp8(monkeypatch, caplog):
    from trellis2_core.models.fp8 import fp8_block_linears

    model = _ss_model()
    monkeypatch.setattr(caps, "_NOTED", set())
    monkeypatch.setattr(caps, "_resolve", lambda device_type, index: DEVICES["sm86 (RTX 3090)"])
    with caplog.at_level(logging.WARNING, logger="trellis2_core"):
        with fp8_block_linears(model) as n:
            assert n == 0
    assert any("fp8_linear is ignored" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(caps, "_resolve", lambda device_type, index: DEVICES["sm89 (L4)"])
    with fp8_block_linears(model) as n:
        assert n == 6 * len(model.blocks)
