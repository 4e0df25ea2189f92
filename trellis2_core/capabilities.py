"""What exists on a device: which fused or compiled choices of the fast path can run there, and their fallbacks.

Every choice of :class:`trellis2_core.config.FastPathConfig` that depends on the hardware (SDPA kernel order,
FlashAttention-4, the pack's Triton kernels, the cuBLASLt MLP epilogue, fp8 GEMMs, ``torch.compile``, CUDA graphs)
is decided here, by pure functions of a small frozen :class:`DeviceTraits` value plus the dtype and head size of the
call. :func:`device_traits` reads the real traits from torch once per device; tests build traits by hand to simulate
devices this machine does not have. Each function answers "does the fast variant exist here?"; when it does not, the
caller uses the fallback that always exists: SDPA memory-efficient/math attention, the PyTorch reference ops, eager.

The facts, as PyTorch 2.13 checks them (``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``,
``torch/utils/_triton.py``, ``torch/_inductor/scheduler.py``) and as Triton and FlashAttention-4 state them:

* cuDNN SDPA: NVIDIA sm80–sm121, cuDNN ≥ 9, float16/bfloat16, head size a multiple of 8 and ≤ 128 (256 only on
  sm90/sm10x with a recent cuDNN; not relied on here); never on ROCm.
* flash SDPA (FlashAttention-2 in PyTorch): NVIDIA sm80–sm121, float16/bfloat16, head size ≤ 256.
* memory-efficient SDPA: NVIDIA sm50–sm121; float32/float16, bfloat16 from sm80; head size a multiple of the GEMM
  alignment (sm80+: 4 for float32, 8 for half; sm7x: 8 for half, 1 for float32; older: 1).
* math SDPA: always.
* bfloat16 arithmetic in Triton/Inductor: NVIDIA sm80+ (ROCm, CPU: yes).
* Triton, hence ``torch.compile`` (Inductor) on GPUs and the pack's Triton kernels: NVIDIA compute capability
  ≥ 7.0 (Inductor's ``GPUTooOldForTriton``), ROCm with the Triton that its PyTorch ships.
* FlashAttention-4 (``flash_attn.cute``): NVIDIA sm90+, float16/bfloat16, head size ≤ 256 and a multiple of 8;
  FlashAttention-2 (the ``flash_attn`` package, used for ragged varlen batches): the same from sm80.
* the fused MLP's cuBLASLt GELU epilogue: NVIDIA CUDA, float16 (any GPU) or bfloat16 (sm80+).
* fp8 GEMMs (``torch._scaled_mm``, float8 e4m3): NVIDIA sm89+; the Triton fp8 conversions that a compiled
  emulation would need do not exist below sm89 either.

ROCm SDPA kernels (AOTriton flash/efficient) depend on the GPU architecture; there the SDPA order is left to PyTorch.
This module imports torch only inside :func:`device_traits`, so the CLI parser can import it cheaply.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["DeviceTraits", "DeviceKind", "device_traits", "sdpa_kernels", "sdpa_order", "preferred_sdpa",
           "triton_runs", "kernel_ops_run", "compile_runs", "graphs_run", "fa4_runs", "flash_attn_runs",
           "triton_attention_runs",
           "fused_mlp_runs", "fp8_runs", "bf16_native", "describe", "note_fallback"]

DeviceKind = Literal["cpu", "cuda", "rocm", "mps", "other"]
DType = Union["torch.dtype", str]

_HALF = ("float16", "bfloat16")
_SM_RANGE_FUSED_SDPA = ((8, 0), (12, 1))  # cuDNN and flash SDPA (check_*_hardware_support)
_SM_RANGE_EFFICIENT = ((5, 0), (12, 1))  # memory-efficient SDPA
_MIN_TRITON = (7, 0)  # Inductor's GPUTooOldForTriton
_MIN_BF16 = (8, 0)
_MIN_FA4 = (9, 0)
_MIN_FP8 = (8, 9)
_CUDNN_MAX_HEAD = 128
_FLASH_MAX_HEAD = 256


@dataclass(frozen=True)
class DeviceTraits:
    """What decides which kernels exist on one device.

    Attributes:
        kind: 'cuda' (NVIDIA), 'rocm' (AMD through HIP: ``torch.version.hip``; torch calls it 'cuda' too), 'mps',
            'cpu', or 'other' (any other torch device type: nothing fused, nothing compiled).
        capability: NVIDIA compute capability ``(major, minor)``; ``(0, 0)`` elsewhere.
        triton: the ``triton`` package imports (whether it can compile for this device is :func:`triton_runs`).
        cudnn: cuDNN ≥ 9.0 is available to PyTorch (cuDNN SDPA needs it).
        name: the device name, for messages only.
    """

    kind: DeviceKind
    capability: tuple[int, int] = (0, 0)
    triton: bool = False
    cudnn: bool = False
    name: str = ""

    @property
    def gpu(self) -> bool:
        """A CUDA or ROCm device: where Triton kernels, ``torch.compile`` and fused SDPA kernels can exist."""
        return self.kind in ("cuda", "rocm")

    def label(self) -> str:
        """A short description for messages, e.g. 'cuda sm75 (Tesla T4)'."""
        where = f"cuda sm{self.capability[0]}{self.capability[1]}" if self.kind == "cuda" else self.kind
        return f"{where} ({self.name})" if self.name else where


def _dtype_name(dtype: DType) -> str:
    return str(dtype).removeprefix("torch.")


def _in_range(cap: tuple[int, int], lo_hi: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return lo_hi[0] <= cap <= lo_hi[1]


def bf16_native(t: DeviceTraits) -> bool:
    """Whether bfloat16 arithmetic exists in hardware (and so in Triton/Inductor): NVIDIA sm80+, every other kind."""
    return t.kind != "cuda" or t.capability >= _MIN_BF16


def _dtype_native(t: DeviceTraits, dtype: DType) -> bool:
    return _dtype_name(dtype) != "bfloat16" or bf16_native(t)


def sdpa_kernels(t: DeviceTraits, dtype: DType, head_dim: int) -> tuple[str, ...]:
    """The PyTorch SDPA kernels that can run ``dtype`` attention of head size ``head_dim`` on ``t``, in
    ``('cudnn', 'flash', 'efficient', 'math')`` order. Off NVIDIA only 'math' is certain (ROCm's AOTriton kernels
    depend on the architecture: PyTorch picks them itself)."""
    name = _dtype_name(dtype)
    found: list[str] = []
    if t.kind == "cuda":
        half, cap = name in _HALF, t.capability
        bf16_ok = name != "bfloat16" or cap >= _MIN_BF16
        if (t.cudnn and half and _in_range(cap, _SM_RANGE_FUSED_SDPA) and head_dim % 8 == 0
                and head_dim <= _CUDNN_MAX_HEAD):
            found.append("cudnn")
        if half and _in_range(cap, _SM_RANGE_FUSED_SDPA) and head_dim <= _FLASH_MAX_HEAD:
            found.append("flash")
        if (name in ("float32", "float16", "bfloat16") and bf16_ok and _in_range(cap, _SM_RANGE_EFFICIENT)
                and head_dim % _efficient_alignment(cap, half) == 0):
            found.append("efficient")
    found.append("math")
    return tuple(found)


def _efficient_alignment(cap: tuple[int, int], half: bool) -> int:
    """Head-size alignment of the memory-efficient kernel (``minimum_gemm_alignment`` in PyTorch)."""
    if cap >= (8, 0):
        return 8 if half else 4
    if cap >= (7, 0) and half:
        return 8
    return 1


def _device_sdpa(t: DeviceTraits) -> tuple[str, ...]:
    """The SDPA kernels that exist on ``t`` for some dtype and head size (the device half of :func:`sdpa_kernels`)."""
    found = [k for k, ok in (("cudnn", t.cudnn and _in_range(t.capability, _SM_RANGE_FUSED_SDPA)),
                             ("flash", _in_range(t.capability, _SM_RANGE_FUSED_SDPA)),
                             ("efficient", _in_range(t.capability, _SM_RANGE_EFFICIENT))) if ok]
    return tuple(found) + ("math",)


#: ``FastPathConfig.attention_kernel`` → the SDPA kernels it prefers, best first
_PREFERRED = {"cudnn": ("cudnn", "flash"), "fa4": ("cudnn", "flash"), "flash": ("flash",),
              "efficient": ("efficient",), "math": ("math",)}


def preferred_sdpa(kernel: str) -> tuple[str, ...]:
    """The SDPA kernels that ``attention_kernel=kernel`` prefers, best first (empty for 'default', 'triton')."""
    return _PREFERRED.get(kernel, ())


def sdpa_order(t: DeviceTraits, kernel: str, disabled: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
    """The SDPA kernels to allow, in priority order, for ``attention_kernel=kernel`` on ``t``; None: no restriction
    (PyTorch's own choice: off NVIDIA, and for 'default' / 'triton').

    The preferred kernels that exist on the device come first, then the memory-efficient kernel and math, so that
    every dtype and head size has a kernel (no "No available kernel" error); 'math' alone stays math only.
    ``disabled``: kernels switched off globally (``torch.backends.cuda.enable_*_sdp(False)``), left out; math is
    kept if nothing else is left.
    """
    if t.kind != "cuda" or kernel not in _PREFERRED:
        return None
    exists = _device_sdpa(t)
    tail = ("math",) if kernel == "math" else ("efficient", "math")
    order = [k for k in _PREFERRED[kernel] + tail if k in exists and k not in disabled]
    return tuple(dict.fromkeys(order)) or ("math",)


def triton_runs(t: DeviceTraits, dtype: DType) -> bool:
    """Whether Triton can compile ``dtype`` kernels for ``t``: a GPU with Triton installed, NVIDIA compute capability
    ≥ 7.0, and bfloat16 only where it is native (sm80+)."""
    if not (t.triton and t.gpu):
        return False
    if t.kind == "cuda" and t.capability < _MIN_TRITON:
        return False
    return _dtype_native(t, dtype)


def kernel_ops_run(t: DeviceTraits, dtype: DType) -> bool:
    """Whether the pack's fused ops (``trellis2_kernels`` q/k norm + RoPE, norm + modulation) give a working
    implementation: the Triton kernel on a GPU where Triton runs for ``dtype``; their PyTorch reference off GPU
    (CPU, MPS: what the kernel package dispatches to there). False on GPUs without Triton for ``dtype``: the
    blocks' plain ops instead."""
    return not t.gpu or triton_runs(t, dtype)


def triton_attention_runs(t: DeviceTraits, dtype: DType, head_dim: int) -> bool:
    """Whether attention_kernel='triton' runs here: as :func:`kernel_ops_run`, and on GPUs only for the head sizes
    the kernel has (powers of two from 16 to 256; its reference elsewhere would build the full score matrix)."""
    if not kernel_ops_run(t, dtype):
        return False
    return not t.gpu or (16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0)


def compile_runs(t: DeviceTraits, dtype: DType) -> bool:
    """Whether ``torch.compile`` (Inductor, Triton code) is used for ``dtype`` blocks on ``t``: GPUs where Triton
    runs for that dtype. Never on CPU/MPS (eager there)."""
    return triton_runs(t, dtype)


def graphs_run(t: DeviceTraits) -> bool:
    """Whether sampler calls may be captured as CUDA graphs on ``t`` (NVIDIA and ROCm/HIP graphs)."""
    return t.gpu


def fa4_runs(t: DeviceTraits, dtype: DType, head_dim: int) -> bool:
    """Whether FlashAttention-4 can run ``dtype`` attention of head size ``head_dim`` on ``t`` (installed or not:
    that is ``sparse.attention.fa4_available``)."""
    return (t.kind == "cuda" and t.capability >= _MIN_FA4 and _dtype_name(dtype) in _HALF
            and head_dim % 8 == 0 and head_dim <= 256)


def flash_attn_runs(t: DeviceTraits, dtype: DType, head_dim: int) -> bool:
    """Whether the optional ``flash_attn`` package's (FlashAttention-2) varlen kernel can run here, installed or not:
    NVIDIA sm80+, float16/bfloat16, head size ≤ 256 and a multiple of 8."""
    return (t.kind == "cuda" and t.capability >= _MIN_BF16 and _dtype_name(dtype) in _HALF
            and head_dim % 8 == 0 and head_dim <= 256)


def fused_mlp_runs(t: DeviceTraits, dtype: DType) -> bool:
    """Whether the cuBLASLt tanh-GELU epilogue runs ``dtype`` GEMMs on ``t`` (NVIDIA, float16, or bfloat16 on
    sm80+); elsewhere the MLP is the reference (unfused) definition."""
    return t.kind == "cuda" and _dtype_name(dtype) in _HALF and _dtype_native(t, dtype)


def fp8_runs(t: DeviceTraits) -> bool:
    """Whether fp8 block GEMMs may be switched on for ``t``: NVIDIA sm89+ (``torch._scaled_mm`` for bfloat16
    blocks, the emulation for other dtypes), and the CPU, where the emulation is the accuracy check (never
    compiled). Off on other GPUs: no fp8 GEMM, and a compiled emulation would need fp8 conversions Triton lacks."""
    return t.kind == "cpu" or (t.kind == "cuda" and t.capability >= _MIN_FP8)


def describe(t: DeviceTraits, dtype: DType, head_dim: int) -> dict[str, object]:
    """Every answer of this module for one device, dtype and head size (for logs, benchmarks and the tests)."""
    return {"device": t.label(), "dtype": _dtype_name(dtype), "head_dim": head_dim,
            "sdpa_kernels": sdpa_kernels(t, dtype, head_dim), "sdpa_order_cudnn": sdpa_order(t, "cudnn"),
            "triton": triton_runs(t, dtype), "kernel_ops": kernel_ops_run(t, dtype),
            "triton_attention": triton_attention_runs(t, dtype, head_dim), "compile": compile_runs(t, dtype),
            "cuda_graphs": graphs_run(t), "fa4": fa4_runs(t, dtype, head_dim),
            "flash_attn": flash_attn_runs(t, dtype, head_dim),
            "fused_mlp": fused_mlp_runs(t, dtype), "fp8": fp8_runs(t)}


_NOTED: set[str] = set()


def note_fallback(explicit: bool, message: str) -> None:
    """Log that a fast-path choice fell back, once per process and message: a warning when the user asked for it
    explicitly, else at info level (a preset's preference that this device lacks is expected, not a problem)."""
    if message in _NOTED:
        return
    _NOTED.add(message)
    log.log(logging.WARNING if explicit else logging.INFO, "%s", message)


@functools.lru_cache(maxsize=None)
def _resolve(device_type: str, index: int | None) -> DeviceTraits:
    import torch

    if device_type == "cpu":
        return DeviceTraits("cpu", name="cpu")
    if device_type == "mps":
        return DeviceTraits("mps", name="mps")
    if device_type != "cuda":
        return DeviceTraits("other", name=device_type)
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    triton = _triton_importable()
    if torch.version.hip is not None:
        return DeviceTraits("rocm", (0, 0), triton, False, str(getattr(props, "gcnArchName", props.name)))
    cudnn = bool(torch.backends.cudnn.is_available()) and (torch.backends.cudnn.version() or 0) >= 90000
    return DeviceTraits("cuda", (int(props.major), int(props.minor)), triton, cudnn, str(props.name))


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def device_traits(device: "torch.device | str") -> DeviceTraits:
    """The traits of a real device, read from torch (cached per device): kind, compute capability, Triton, cuDNN."""
    import torch

    device = torch.device(device)
    return _resolve(device.type, device.index)
