"""Run-time switches of the fast inference path (performance.md §4.1, §6.2).

:class:`FastPathConfig` is a frozen value passed down explicitly (stage functions → sampler → model forward);
nothing here is global. Every switch has a reference behaviour it must match (final latents cosine ≥ 0.999 on the same
noise, ``tests/test_fast_path.py``; the approximate ``fp8_linear`` has a looser gate, see its field), and
``FastPathConfig()`` (all switches off, default attention) is the plain eager path that the golden cases check.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, NamedTuple

if TYPE_CHECKING:  # torch only in annotations: the CLI reads this module's constants without importing torch
    import torch

__all__ = ["FastPathConfig", "BlockKernels", "ATTENTION_KERNELS", "ATTENTION_CHOICES"]

#: ``attention_kernel`` values: which fused SDPA kernel PyTorch may use on CUDA (§3 of performance.md)
ATTENTION_KERNELS = ("default", "cudnn", "flash", "efficient", "math", "triton", "fa4")
#: what users pick (node input, CLI ``--attention``) for :meth:`FastPathConfig.with_attention`; 'auto' = no override
ATTENTION_CHOICES = ("auto", "cudnn", "fa4", "flash", "triton")


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
        compile_blocks: ``torch.compile`` the DiT block (CUDA only; ignored on other devices). Implies dense tokens.
        cuda_graphs: replay each sampler model call from a CUDA graph captured on its first call (CUDA only;
            removes launch cost; measured no gain on an H100 once the blocks are compiled, so off in ``fast()``).
        attention_kernel: fused SDPA kernel to allow on CUDA: 'default' (PyTorch's choice), 'cudnn', 'flash'
            (FlashAttention-2, the official op), 'efficient' or 'math'; or 'triton': the DiT blocks use the pack's
            Triton flash-attention kernel (``trellis2_kernels.attention``; its PyTorch reference off GPU); or
            'fa4': the DiT blocks call FlashAttention-4 for model calls of ≥ ``fused_min_rows`` rows (optional
            package ``flash-attn-4``; 1.14–1.17× cuDNN at 20–47 K tokens on an H200), cuDNN otherwise and where
            FA4 is not used (CPU, fp32, GPUs before compute capability 9.0). SDPA choices are ignored on CPU.
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
            time per call (custom-op dispatch and Triton launch; FA4's launch ~0.2 ms); below ~16 K rows the GPU
            finishes a block before the host has issued the next one and the fused ops made launch-bound runs slower
            (H200: 512 texture 255 → 406 ms, 1024 structure under ``low`` 651 → 1340 ms; FA4 on every call: 1024
            structure 556 → 684 ms) while saving 2 % (FA4: 8–10 %) at 20 K+ rows (benchmarks/RESULTS.md,
            2026-12-03 second and third sessions).
        fp8_linear: run the six per-token linears of every DiT block (self-attention qkv/out, cross-attention q/out,
            MLP) as fp8 GEMMs: activations per token and weights per output channel rounded to float8 e4m3, fp32
            accumulation (``torch._scaled_mm`` on NVIDIA GPUs of compute capability ≥ 8.9 with bf16 blocks; an
            emulation, slower than plain, elsewhere). Approximate, not a rounding-level change: each GEMM is off by a
            few percent, so it is off by default and not in ``fast()`` until the accuracy gate holds (final latents
            cosine ≥ 0.99 vs the plain path in ``tests/test_fast_path.py`` on the tiny models, and on real weights
            in ``benchmarks/bench_pipeline.py`` mode ``fast+fp8_linear``). Cross-attention K/V, embedders, adaLN and
            the input/output layers stay in their own precision (``trellis2_core/models/fp8.py``).
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
    fused_min_rows: int = 16384
    fp8_linear: bool = False

    def __post_init__(self) -> None:
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, "
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
        (off by default)."""
        from .sparse.attention import fa4_available  # imports FA4 (once) only if it is installed

        return cls(cache_cross_kv=True, skip_uncond_cross_attn=True, batch_cfg=True, dense_tokens=True,
                   compile_blocks=compile_blocks, attention_kernel="fa4" if fa4_available() else "cudnn",
                   fused_mlp=True, fused_qk_norm_rope=True, fused_norm_modulate=True, fp8_linear=fp8_linear)

    def with_attention(self, kernel: str | None) -> "FastPathConfig":
        """This config with ``attention_kernel=kernel`` (``None`` or 'auto': unchanged, the preset's own choice).

        Raises:
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
        return dataclasses.replace(self, attention_kernel=kernel)

    def use_dense_tokens(self) -> bool:
        return self.dense_tokens or self.compile_blocks

    def graphs_on(self, device: torch.device) -> bool:
        """Whether sampler calls are replayed from CUDA graphs on ``device`` (never off CUDA)."""
        return self.cuda_graphs and device.type == "cuda"

    def compile_on(self, device: torch.device) -> bool:
        """Whether blocks are compiled on ``device`` (never off CUDA)."""
        return self.compile_blocks and device.type == "cuda"

    def attention_backend(self) -> str:
        """The ``backend`` the DiT blocks pass to :func:`trellis2_core.sparse.attention.attention`."""
        return self.attention_kernel if self.attention_kernel in ("triton", "fa4") else "auto"

    def block_kernels(self, rows: int) -> "BlockKernels":
        """The kernel choices handed to every DiT block forward of a model call on ``rows`` token rows."""
        big = rows >= self.fused_min_rows
        attention = self.attention_backend()
        if attention == "fa4" and not big:  # FA4's host cost per call (~0.2 ms) loses to cuDNN on short sequences
            attention = "auto"
        return BlockKernels(attention, self.fused_mlp, self.fused_qk_norm_rope and big,
                            self.fused_norm_modulate and big)

    def attention_context(self, device: torch.device) -> ContextManager[None]:
        """A context that restricts SDPA to ``attention_kernel`` on CUDA; a no-op elsewhere or for 'default'."""
        if device.type != "cuda" or self.attention_kernel in ("default", "triton"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa4": SDPBackend.CUDNN_ATTENTION,
                 "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "math": SDPBackend.MATH}[self.attention_kernel]
        if self.attention_kernel in ("cudnn", "fa4"):  # cuDNN rejects some shapes/dtypes: let flash take those
            return sdpa_kernel([first, SDPBackend.FLASH_ATTENTION], set_priority=True)
        return sdpa_kernel([first])
