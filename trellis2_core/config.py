"""Run-time switches of the fast inference path (performance.md §4.1, §6.2).

:class:`FastPathConfig` is a frozen value passed down explicitly (stage functions → sampler → model forward);
nothing here is global. Every switch has a reference behaviour it must match (final latents cosine ≥ 0.999 on the same
noise, ``tests/test_fast_path.py``; the approximate ``fp8_linear`` has a looser gate, see its field), and
``FastPathConfig()`` (all switches off, default attention) is the plain eager path that the golden cases check.

The switches say what to use where it exists; what runs on a given device, dtype and head size is decided by
:mod:`trellis2_core.capabilities` (:meth:`FastPathConfig.attention_context`, :meth:`~FastPathConfig.block_kernels`,
:meth:`~FastPathConfig.compile_on`, :meth:`~FastPathConfig.graphs_on` and, for ``fp8_linear``,
:func:`trellis2_core.models.fp8.fp8_block_linears` ask it), with a fallback that always exists (SDPA
memory-efficient/math, the PyTorch reference ops, eager), so no switch can make a run fail on a device that lacks
its kernel.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, NamedTuple, Union

from . import capabilities as caps
from .capabilities import DeviceTraits
from .errors import InputError

if TYPE_CHECKING:  # torch only in annotations: the CLI reads this module's constants without importing torch
    import torch

__all__ = ["FastPathConfig", "BlockKernels", "ATTENTION_KERNELS", "ATTENTION_CHOICES", "SPEEDS"]

#: ``attention_kernel`` values: which fused SDPA kernel PyTorch may use on CUDA (§3 of performance.md)
ATTENTION_KERNELS = ("default", "cudnn", "flash", "efficient", "math", "triton", "fa4")
#: user-facing speed choices (:meth:`FastPathConfig.for_speed`)
SPEEDS = ("fast", "fast_no_compile", "eager")
#: what users pick (node input, CLI ``--attention``) for :meth:`FastPathConfig.with_attention`; 'auto' = no override
ATTENTION_CHOICES = ("auto", "cudnn", "fa4", "flash", "triton")

Where = Union["torch.device", str, DeviceTraits]
"""A device, or (tests) the simulated :class:`~trellis2_core.capabilities.DeviceTraits` of one."""


class BlockKernels(NamedTuple):
    """Which kernels a DiT block forward uses (from :meth:`FastPathConfig.block_kernels`; the defaults are the
    plain ops). A tuple of constants, so a compiled block specialises on it."""

    attention: str = "auto"  # ``backend`` of trellis2_core.sparse.attention.attention
    fused_mlp: bool = False
    fused_qk: bool = False
    fused_norm: bool = False


@dataclass(frozen=True)
class FastPathConfig:
    """Switches of the fast path; each one is exact up to floating-point rounding, except ``fp8_linear``.

    Attributes:
        cache_cross_kv: compute every block's cross-attention keys/values once per sampling stage (the image
            context is fixed during a stage) instead of at every model call. Skipped for models whose weights a
            VRAM preset offloads (``medium``/``low``): the cache is 0.76 GB at 1024 and saves ~0.5 % of the time.
        skip_uncond_cross_attn: the unconditional pass uses an all-zero context, so every key is the same
            (``RMSNorm(bias_k)``) and every value is ``bias_v``: the softmax is uniform and the cross-attention output
            is the per-block constant ``to_out(bias_v)``. Precompute it and skip ``norm2``/``to_q``/attention.
        batch_cfg: run the conditional and unconditional passes of a CFG step as one batch of two.
        dense_tokens: run a sparse latent whose batch elements have equal token counts (always the case for one
            sample or a CFG pair) as dense ``[B, L, C]`` tokens through the blocks (plain SDPA, no varlen packing).
        compile_blocks: ``torch.compile`` the DiT block where Triton runs for the blocks' dtype (CUDA compute
            capability ≥ 7.0, bfloat16 from 8.0; ROCm); eager elsewhere (CPU, MPS, older GPUs). Implies dense tokens.
        cuda_graphs: replay each sampler model call from a CUDA graph captured on its first call (CUDA/ROCm only;
            removes launch cost; measured no gain on an H100 once the blocks are compiled, so off in ``fast()``).
        attention_kernel: fused SDPA kernel to allow on CUDA: 'default' (PyTorch's choice), 'cudnn', 'flash'
            (FlashAttention-2, the official op), 'efficient' or 'math'; or 'triton': the DiT blocks use the pack's
            Triton flash-attention kernel (``trellis2_kernels.attention``; its PyTorch reference off GPU); or
            'fa4': the DiT blocks call FlashAttention-4 for model calls of ≥ ``fused_min_rows`` rows (optional
            package ``flash-attn-4``; 1.14–1.17× cuDNN at 20–47 K tokens on an H200), cuDNN otherwise and where
            FA4 does not run (CPU, fp32, GPUs before compute capability 9.0). The SDPA choice is a preference, not
            a restriction: the memory-efficient and math kernels stay allowed after it, so a dtype or head size the
            preferred kernel lacks (fp32, GPUs before sm80) still runs. Ignored off NVIDIA GPUs (PyTorch's choice).
            A kernel that does not exist for the device, dtype or head size is replaced by SDPA (logged once).
        fused_mlp: compute the MLP's first layer and its tanh-GELU as one GEMM with the activation in the epilogue
            (cuBLASLt on CUDA fp16/bf16, :mod:`trellis2_core.models.fused_mlp`): one pass less over the largest
            activation of the block and one hidden-sized buffer less at the peak. The reference elsewhere.
        fused_qk_norm_rope: the self-attention's q/k RMS norm and RoPE as one Triton pass over q and one over k
            (``trellis2_kernels.qk_norm_rope`` via :mod:`trellis2_core.models.fused_qk`, with the model's rounding
            between the two steps); its PyTorch reference (the unfused ops) off GPU.
        fused_norm_modulate: the blocks' non-affine LayerNorm + adaLN modulation (before self-attention and before
            the MLP) as one Triton pass for dense tokens (``trellis2_kernels.layer_norm_modulate`` via
            :mod:`trellis2_core.models.fused_norm`); its PyTorch reference off GPU.
        fused_min_rows: the two switches above and ``attention_kernel='fa4'`` apply to model calls of at least
            this many token rows (batch × tokens; cuDNN attention below it). Each fused op costs ~0.1 ms of host
            time per call (custom-op dispatch and Triton launch; FA4's launch ~0.2 ms); at ~8 K rows and below the
            GPU finishes a block before the host has issued the next one and the fused ops made launch-bound runs
            slower (H200: 512 texture 255 → 406 ms, 1024 structure (8 K rows) under ``low`` 651 → 1340 ms; FA4 on
            every call: 1024 structure 556 → 684 ms) while saving 2 % (FA4: 8–10 %) at 20 K+ rows
            (benchmarks/RESULTS.md, 2026-12-03 second and third sessions). 12 K (was 16 K) also takes the batch-1
            HR calls of a typical 1024 object (N_HR ≈ 14 K: the texture stage and the unguided shape steps): texture
            2.13 → 1.87 s, image → GLB 10.1 → 9.3 s warm (2026-12-04 fourth session).
        fp8_linear: run the six per-token linears of every DiT block (self-attention qkv/out, cross-attention q/out,
            MLP) as fp8 GEMMs: activations per token and weights per output channel rounded to float8 e4m3, fp32
            accumulation (``torch._scaled_mm`` on NVIDIA GPUs of compute capability ≥ 8.9 with bf16 blocks; an
            emulation, slower than plain, for other dtypes there and on the CPU; ignored, with a logged warning, on
            other GPUs, which have no fp8 GEMM). Approximate, not a rounding-level change: each GEMM is off by a
            few percent, so it is off by default and not in ``fast()`` until the accuracy gate holds (final latents
            cosine ≥ 0.99 vs the plain path in ``tests/test_fast_path.py`` on the tiny models, and on real weights
            in ``benchmarks/bench_pipeline.py`` mode ``fast+fp8_linear``). Cross-attention K/V, embedders, adaLN and
            the input/output layers stay in their own precision (``trellis2_core/models/fp8.py``).
        attention_explicit: ``attention_kernel`` was asked for by the user (:meth:`with_attention`), not a preset's
            preference: when it cannot run, the fallback is logged as a warning instead of at info level. Not part
            of equality (it changes no result).
    """

    cache_cross_kv: bool = False
    skip_uncond_cross_attn: bool = False
    batch_cfg: bool = False
    dense_tokens: bool = False
    compile_blocks: bool = False
    cuda_graphs: bool = False
    attention_kernel: str = "default"
    fused_mlp: bool = False
    fused_qk_norm_rope: bool = False
    fused_norm_modulate: bool = False
    fused_min_rows: int = 12288
    fp8_linear: bool = False
    attention_explicit: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise InputError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, "
                             f"got {self.attention_kernel!r}")

    @classmethod
    def reference(cls) -> "FastPathConfig":
        """The official op mix: eager, FlashAttention-2-class attention, nothing cached."""
        return cls(attention_kernel="flash")

    @classmethod
    def fast(cls, compile_blocks: bool = True, fp8_linear: bool = False) -> "FastPathConfig":
        """The measured-fastest set on an H100/H200 (benchmarks/RESULTS.md, "Pipeline" and the 2026-12-03 session):
        every switch but CUDA graphs (no gain once the blocks are compiled), FlashAttention-4 for long sequences when
        the optional ``flash-attn-4`` is installed (1.14–1.17× cuDNN there), else cuDNN attention (1.6–1.9×
        FlashAttention-2, 1.1× our Triton kernel), the fused MLP epilogue, the q/k norm + RoPE and norm + modulation
        kernels (for calls of ≥ ``fused_min_rows`` rows). ``fp8_linear=True`` adds the approximate fp8 block GEMMs
        (off by default).

        Safe on every device: these are preferences, and each model call uses the ones that exist for its device,
        dtype and head size (:mod:`trellis2_core.capabilities`), e.g. memory-efficient SDPA and eager blocks on a
        T4 in bfloat16, the plain ops on the CPU."""
        from .sparse.attention import fa4_available  # imports FA4 (once) only if it is installed

        return cls(cache_cross_kv=True, skip_uncond_cross_attn=True, batch_cfg=True, dense_tokens=True,
                   compile_blocks=compile_blocks, attention_kernel="fa4" if fa4_available() else "cudnn",
                   fused_mlp=True, fused_qk_norm_rope=True, fused_norm_modulate=True, fp8_linear=fp8_linear)

    @classmethod
    def for_speed(cls, speed: str) -> "FastPathConfig":
        """The config of a user-facing speed choice (:data:`SPEEDS`: the Load node's ``speed``, the CLI's
        ``--speed``): 'fast' = :meth:`fast`; 'fast_no_compile' = :meth:`fast` without the compiled blocks (no
        compile wait in a new process, a few % slower warm); 'eager' = the plain op-by-op path."""
        if speed not in SPEEDS:
            raise InputError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}")
        if speed == "eager":
            return cls()
        return cls.fast(compile_blocks=speed == "fast")

    def with_attention(self, kernel: str | None) -> "FastPathConfig":
        """This config with ``attention_kernel=kernel`` (``None`` or 'auto': unchanged, the preset's own choice).

        An explicit kernel that turns out not to exist for a run's device, dtype or head size (e.g. 'cudnn' on a T4
        or in float32, 'fa4' before sm90) does not fail the run: that model call uses SDPA's kernels that do exist,
        and a warning says so once. Only what can be known without a device is an error.

        Raises:
            InputError: ``kernel`` is not one of ``ATTENTION_KERNELS``.
            BackendError: 'fa4' was asked for but FlashAttention-4 is not installed (said before any work starts).
        """
        if kernel in (None, "auto"):
            return self
        if kernel == "fa4":
            from .sparse.attention import fa4_available

            if not fa4_available():
                from .errors import BackendError

                raise BackendError("attention kernel 'fa4' needs the optional FlashAttention-4 package "
                                   "(flash-attn-4), which is not installed or fails to import: run "
                                   "'python install.py --fa4' in the pack's folder (for ComfyUI with ComfyUI's "
                                   "Python, then restart it), or use 'auto'.")
        return dataclasses.replace(self, attention_kernel=kernel, attention_explicit=True)

    def use_dense_tokens(self) -> bool:
        return self.dense_tokens or self.compile_blocks

    def graphs_on(self, device: Where) -> bool:
        """Whether sampler calls are replayed from CUDA graphs on ``device`` (CUDA/ROCm only)."""
        return self.cuda_graphs and caps.graphs_run(_traits(device))

    def compile_on(self, device: Where, dtype: "torch.dtype | str") -> bool:
        """Whether blocks running in ``dtype`` are compiled on ``device``: only where Triton runs for that dtype
        (:func:`~trellis2_core.capabilities.compile_runs`); eager elsewhere, with an info line on a GPU."""
        if not self.compile_blocks:
            return False
        t = _traits(device)
        if caps.compile_runs(t, dtype):
            return True
        if t.gpu:
            caps.note_fallback(False, f"torch.compile is skipped for {_name(dtype)} blocks on {t.label()}: "
                                      f"Triton {'is not installed' if not t.triton else 'cannot compile them there'}; "
                                      "the blocks run eagerly (bfloat16 Triton code needs compute capability 8.0, "
                                      "any Triton code 7.0)")
        return False

    def attention_backend(self) -> str:
        """The ``backend`` the DiT blocks ask :func:`trellis2_core.sparse.attention.attention` for, before
        :meth:`block_kernels` checks it against the device."""
        return self.attention_kernel if self.attention_kernel in ("triton", "fa4") else "auto"

    def block_kernels(self, rows: int, device: Where, dtype: "torch.dtype | str", head_dim: int) -> "BlockKernels":
        """The kernel choices handed to every DiT block forward of a model call on ``rows`` token rows, for blocks
        running ``dtype`` with heads of ``head_dim`` on ``device``: each switch where its kernel exists there
        (:mod:`trellis2_core.capabilities`), the plain op otherwise."""
        kernels, notes = _block_kernels(self, self.attention_explicit, rows >= self.fused_min_rows, _traits(device),
                                        _name(dtype), int(head_dim))
        for explicit, message in notes:
            caps.note_fallback(explicit, message)
        return kernels

    def attention_context(self, device: Where) -> ContextManager[None]:
        """A context that orders SDPA's kernels on NVIDIA GPUs as ``attention_kernel`` prefers, keeping the
        memory-efficient and math kernels after the preferred ones (and kernels disabled globally with
        ``torch.backends.cuda.enable_*_sdp(False)`` out), so every dtype and head size finds a kernel; a no-op
        elsewhere and for 'default'/'triton' (:func:`~trellis2_core.capabilities.sdpa_order`)."""
        t = _traits(device)
        if caps.sdpa_order(t, self.attention_kernel) is None:
            return contextlib.nullcontext()
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        flags = {"cudnn": torch.backends.cuda.cudnn_sdp_enabled, "flash": torch.backends.cuda.flash_sdp_enabled,
                 "efficient": torch.backends.cuda.mem_efficient_sdp_enabled,
                 "math": torch.backends.cuda.math_sdp_enabled}
        disabled = frozenset(name for name, enabled in flags.items() if not enabled())
        order = caps.sdpa_order(t, self.attention_kernel, disabled)
        assert order is not None
        wanted = caps.preferred_sdpa(self.attention_kernel)
        if wanted[0] not in order:
            caps.note_fallback(self.attention_explicit,
                  f"attention kernel '{self.attention_kernel}' has no {wanted[0]} SDPA kernel on {t.label()}"
                  f"{' (disabled in torch.backends.cuda)' if wanted[0] in disabled else ''}; SDPA uses "
                  f"{' / '.join(order)} instead")
        backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        return _restoring_priority(sdpa_kernel([backends[name] for name in order], set_priority=True))


@contextlib.contextmanager
def _restoring_priority(context: ContextManager[object]):
    """``context`` (an ``sdpa_kernel``), then SDPA's exact previous priority order: ``sdpa_kernel`` restores only
    the kernels enabled on entry in front, so with some disabled globally the order would stay changed after it."""
    import torch

    previous = torch._C._get_sdp_priority_order()
    try:
        with context:
            yield
    finally:
        torch._C._set_sdp_priority_order(previous)


def _traits(device: Where) -> DeviceTraits:
    return device if isinstance(device, DeviceTraits) else caps.device_traits(device)


def _name(dtype: "torch.dtype | str") -> str:
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=256)
def _block_kernels(fast: FastPathConfig, explicit: bool, big: bool, t: DeviceTraits, dtype: str, head_dim: int
                   ) -> tuple[BlockKernels, tuple[tuple[bool, str], ...]]:
    """:meth:`FastPathConfig.block_kernels` as a pure function: the choices and the fallback notes to log
    (``explicit``: ``fast.attention_explicit``, a key of its own since it is not part of the config's equality)."""
    notes: list[tuple[bool, str]] = []
    where = f"{dtype} attention with head size {head_dim} on {t.label()}"
    kernel = fast.attention_kernel
    attention = fast.attention_backend()
    if attention == "fa4" and not big:  # FA4's host cost per call (~0.2 ms) loses to cuDNN on short sequences
        attention = "auto"
    if attention == "fa4" and not caps.fa4_runs(t, dtype, head_dim):
        attention = "auto"
        if t.gpu:  # off GPU FA4 never runs: documented, nothing to say
            notes.append((explicit, f"FlashAttention-4 does not run {where} (it needs sm90+, "
                                                   "float16/bfloat16, head size ≤ 256 and a multiple of 8); "
                                                   "using SDPA"))
    if attention == "triton" and not caps.triton_attention_runs(t, dtype, head_dim):
        attention = "auto"
        notes.append((explicit, f"the Triton attention kernel does not run {where} (it needs Triton "
                                               "for this dtype and a power-of-two head size 16-256); using SDPA"))
    wanted = caps.preferred_sdpa(kernel) if attention == "auto" else ()
    if wanted and t.kind == "cuda":
        exists = caps.sdpa_kernels(t, dtype, head_dim)
        if not any(name in exists for name in wanted):
            notes.append((explicit,
                          f"SDPA has no {' or '.join(wanted)} kernel for {where}; PyTorch uses "
                          f"{next(name for name in ('efficient', 'math') if name in exists)} attention instead"))
    ops = caps.kernel_ops_run(t, dtype)
    if big and not ops and (fast.fused_qk_norm_rope or fast.fused_norm_modulate):
        notes.append((False, f"the fused Triton norm/RoPE kernels do not run {dtype} on {t.label()}; the blocks use "
                             "the plain ops"))
    mlp = fast.fused_mlp and (caps.fused_mlp_runs(t, dtype) or not t.gpu)
    kernels = BlockKernels(attention, mlp, fast.fused_qk_norm_rope and big and ops,
                           fast.fused_norm_modulate and big and ops)
    return kernels, tuple(notes)
