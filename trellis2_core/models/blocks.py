"""Building blocks of the flow DiTs, for dense ``[B, L, C]`` tokens and for SparseTensors (spec §4.2).

The hot path is split into small named functions (:func:`modulate`, :func:`gate_residual`, the q/k norm + RoPE in
:meth:`SelfAttention.forward`, the attention call) so that fused kernels can replace them one at a time. Parameter
names follow the official state dict (§4.7). Dense and sparse inputs run the same code: a SparseTensor's features
are the ``[T, C]`` token matrix, per-sample vectors are broadcast through its batch index, and attention is done per
batch element with variable-length attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BlockKernels, FastPathConfig
from ..errors import InputError
from ..sparse.attention import AttentionBackend, attention, varlen_attention
from ..sparse.layers import LayerNorm32
from ..sparse.rope import RopeTable, apply_rope
from ..sparse.tensor import SparseTensor
from .fused_mlp import linear_gelu_tanh
from .fused_norm import layer_norm_modulate
from .fused_qk import qk_norm_rope
from .streaming import weights_on_device

__all__ = ["Tokens", "CrossContext", "TimestepEmbedder", "MultiHeadRMSNorm", "SelfAttention", "CrossAttention",
           "FeedForward", "ModulatedTransformerCrossBlock", "FlowDiT", "timestep_embedding", "modulate",
           "gate_residual", "per_token", "trunk_dtype_from_args"]

Tokens = Union[Tensor, SparseTensor]
"""Either dense tokens ``[B, L, C]`` or a SparseTensor whose features ``[T, C]`` are the tokens of all samples."""


def _feats(x: Tokens) -> Tensor:
    return x.feats if isinstance(x, SparseTensor) else x


def _like(x: Tokens, feats: Tensor) -> Tokens:
    return x.replace(feats) if isinstance(x, SparseTensor) else feats


def per_token(x: Tokens, v: Tensor) -> Tensor:
    """Make a per-sample vector ``v [B, C]`` broadcastable against the tokens of ``x``.

    Dense: ``[B, 1, C]``. Sparse: ``[T, C]`` through the batch index (or ``v`` itself when ``B == 1``).
    """
    if isinstance(x, SparseTensor):
        return v if v.shape[0] == 1 else x.broadcast_batch(v)
    return v[:, None, :]


@dataclass(frozen=True)
class CrossContext:
    """A context prepared once per sampling stage (performance.md §4.1; :meth:`FlowDiT.prepare_context`): elements
    ``0..n_live-1`` attend to ``tokens`` (per-block K/V in ``kv`` if cached), the others have an all-zero context whose
    cross-attention output is the per-block constant ``const[i] [C]``."""

    tokens: Tensor  # [B, M, Cc] in the trunk dtype
    n_live: int
    kv: tuple[tuple[Tensor, Tensor], ...] | None = None  # per block: k, v [n_live, M, H, D]
    const: tuple[Tensor, ...] | None = None  # per block [C]; needed when n_live < B

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def pair(self, other: "CrossContext") -> "CrossContext | None":
        """This context's elements followed by ``other``'s (a CFG batch), or None when that cannot be expressed."""
        if self.n_live != self.shape[0]:
            return None  # zero elements must come last
        tokens, kv = torch.cat([self.tokens, other.tokens]), self.kv
        if other.n_live and (kv is None or other.kv is None):
            kv = None
        elif other.n_live:
            kv = tuple((torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(self.kv, other.kv))
        return CrossContext(tokens, self.n_live + other.n_live, kv, other.const)


def modulate(h: Tokens, shift: Tensor, scale: Tensor) -> Tokens:
    """adaLN modulation ``h·(1 + scale) + shift`` (§4.2; shift/scale already broadcast by :func:`per_token`)."""
    return _like(h, _feats(h) * (1 + scale) + shift)


def gate_residual(x: Tokens, h: Tokens, gate: Tensor | None = None) -> Tokens:
    """Residual update ``x + gate·h`` (``x + h`` without a gate)."""
    hf = _feats(h) if gate is None else _feats(h) * gate
    return _like(x, _feats(x) + hf)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[B, dim]`` float32 of ``t [B]`` (already ×1000), ``[cos | sin]`` order (§4.2, §13.2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``t [B]`` → ``[B, C]``: sinusoid(256) → Linear → SiLU → Linear (keys ``mlp.0``, ``mlp.2``; fp32)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.frequency_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class MultiHeadRMSNorm(nn.Module):
    """Per-head q/k norm: L2-normalise over the head dim × ``gamma [H, D]`` × ``sqrt(D)``, in fp32 (§4.2, §13.4)."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # [..., H, D]
        return (F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional q/k RMS norm and RoPE (keys ``to_qkv``, ``*_rms_norm``, ``to_out``)."""

    def __init__(self, channels: int, num_heads: int, qk_rms_norm: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise InputError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def qk_norm_rope(self, q: Tensor, k: Tensor, rope: RopeTable | None, fused: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """q/k RMS norm, then RoPE (§4.2: the rotation comes after the norm). ``q``, ``k``: ``[..., N, H, D]``.
        ``fused``: both steps as one kernel pass each (:mod:`.fused_qk`) when the block has both."""
        if fused and self.qk_rms_norm and rope is not None:
            return qk_norm_rope(q, k, self.q_rms_norm.gamma, self.k_rms_norm.gamma, *rope, self.q_rms_norm.scale)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k

    def forward(self, x: Tokens, rope: RopeTable | None = None, backend: AttentionBackend = "auto",
                fused_qk: bool = False) -> Tokens:
        qkv = self.to_qkv(_feats(x)).unflatten(-1, (3, self.num_heads, self.head_dim))  # [..., N, 3, H, D]
        q, k, v = qkv.unbind(dim=-3)
        q, k = self.qk_norm_rope(q, k, rope, fused_qk)
        if isinstance(x, SparseTensor):
            h = varlen_attention(q, k, v, x.seqlens, x.seqlens, backend=backend)  # [T, H, D]
        else:
            h = attention(q, k, v, backend=backend)  # [B, L, H, D]
        return _like(x, self.to_out(h.flatten(-2)))


class CrossAttention(nn.Module):
    """Attention of the tokens to a dense context ``[B, M, Cc]``; q/k RMS norm, no RoPE (§4.2).

    :meth:`project_kv` is separate so that the context's keys/values can be computed once and passed back in.
    """

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, qk_rms_norm: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise InputError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, channels // num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(ctx_channels, 2 * channels)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Context ``[B, M, Cc]`` → normalised keys and values, each ``[B, M, H, D]``."""
        kv = self.to_kv(context).unflatten(-1, (2, self.num_heads, self.head_dim))  # [B, M, 2, H, D]
        k, v = kv.unbind(dim=-3)
        if self.qk_rms_norm:
            k = self.k_rms_norm(k)
        return k, v

    def zero_context_output(self) -> Tensor:
        """Output ``[C]`` for an all-zero context, whatever the query (performance.md §4.1): every key is
        ``RMSNorm(bias_k)`` and every value ``bias_v``, so the softmax is uniform and the output ``to_out(bias_v)``."""
        zeros = self.to_kv.weight.new_zeros(1, self.to_kv.in_features)
        v = self.to_kv(zeros).unflatten(-1, (2, self.num_heads, self.head_dim))[:, 1]  # [1, H, D]
        return self.to_out(v.flatten(-2))[0]

    def forward(self, x: Tokens, context: Tensor, kv: tuple[Tensor, Tensor] | None = None,
                backend: AttentionBackend = "auto") -> Tokens:
        q = self.to_q(_feats(x)).unflatten(-1, (self.num_heads, self.head_dim))  # [..., N, H, D]
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
        k, v = kv if kv is not None else self.project_kv(context)
        if isinstance(x, SparseTensor):
            if k.shape[0] != x.batch_size:
                raise InputError(f"context has batch {k.shape[0]} but the sparse input has {x.batch_size} samples")
            m = k.shape[1]
            h = varlen_attention(q, k.flatten(0, 1), v.flatten(0, 1), x.seqlens, [m] * k.shape[0], backend=backend)
        else:
            h = attention(q, k, v, backend=backend)
        return _like(x, self.to_out(h.flatten(-2)))


class FeedForward(nn.Module):
    """``Linear(C → int(C·ratio)) → GELU(tanh) → Linear(→ C)`` (keys ``mlp.0``, ``mlp.2``; §4.2, §13.7)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: Tokens, fused: bool = False) -> Tokens:
        """``fused``: the first layer and its GELU as one GEMM (:mod:`.fused_mlp`; plain ``nn.Linear`` only)."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        if not fused or type(fc1) is not nn.Linear:
            return _like(x, self.mlp(_feats(x)))
        return _like(x, fc2(linear_gelu_tanh(_feats(x), fc1.weight, fc1.bias)))


class ModulatedTransformerCrossBlock(nn.Module):
    """Pre-norm DiT block with shared adaLN: modulated self-attn, affine-norm cross-attn, modulated MLP (§4.2).

    ``forward(x, mod, context)`` with ``x`` dense ``[B, L, C]`` or sparse, ``mod [B, 6C]`` (the shared adaLN output
    in the trunk dtype) and ``context [B, M, Cc]``. Only the shared-modulation form (``share_mod=True``, the one
    every released checkpoint uses) is implemented: the block owns an additive ``modulation [6C]`` vector.
    """

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(channels, eps=1e-6, elementwise_affine=False)
        self.norm2 = LayerNorm32(channels, eps=1e-6, elementwise_affine=True)
        self.norm3 = LayerNorm32(channels, eps=1e-6, elementwise_affine=False)
        self.self_attn = SelfAttention(channels, num_heads, qk_rms_norm)
        self.cross_attn = CrossAttention(channels, ctx_channels, num_heads, qk_rms_norm_cross)
        self.mlp = FeedForward(channels, mlp_ratio)
        self.modulation = nn.Parameter(torch.zeros(6 * channels))

    def forward(self, x: Tokens, mod: Tensor, context: Tensor | None, rope: RopeTable | None = None,
                kv: tuple[Tensor, Tensor] | None = None, const: Tensor | None = None,
                n_live: int | None = None, kernels: BlockKernels = BlockKernels()) -> Tokens:
        """One block. ``kv``: precomputed context keys/values; elements ``n_live..B-1`` have a zero context and
        add ``const [C]`` (:class:`CrossContext`) instead of running the cross-attention (dense tokens only).
        ``kernels``: the fast path's kernel choices (:meth:`FastPathConfig.block_kernels`)."""
        # §4.2: (fp32 modulation + trunk-dtype mod) is cast back to the trunk dtype before the split
        mod = (self.modulation + mod).to(mod.dtype)  # [B, 6C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = self.norm_modulate(self.norm1, x, shift_msa, scale_msa, kernels.fused_norm)
        x = gate_residual(x, self.self_attn(h, rope, kernels.attention, kernels.fused_qk), per_token(x, gate_msa))
        x = self.cross_residual(x, context, kv, const, n_live, kernels.attention)
        h = self.norm_modulate(self.norm3, x, shift_mlp, scale_mlp, kernels.fused_norm)
        return gate_residual(x, self.mlp(h, kernels.fused_mlp), per_token(x, gate_mlp))

    @staticmethod
    def norm_modulate(norm: LayerNorm32, x: Tokens, shift: Tensor, scale: Tensor, fused: bool) -> Tokens:
        """``modulate(norm(x), shift, scale)`` with per-sample ``shift``/``scale [B, C]``; ``fused``: one kernel
        pass (:mod:`.fused_norm`) for dense tokens."""
        if fused and not isinstance(x, SparseTensor):
            return layer_norm_modulate(x, shift, scale, norm.eps)
        return modulate(norm(x), per_token(x, shift), per_token(x, scale))

    def cross_residual(self, x: Tokens, context: Tensor | None, kv: tuple[Tensor, Tensor] | None,
                       const: Tensor | None, n_live: int | None, backend: AttentionBackend = "auto") -> Tokens:
        """``x + CrossAttn(LN2(x))``; zero-context elements (from ``n_live`` on) add the constant instead."""
        b = x.batch_size if isinstance(x, SparseTensor) else x.shape[0]
        live = b if const is None or n_live is None else n_live
        if live >= b:
            return gate_residual(x, self.cross_attn(self.norm2(x), context, kv, backend))
        if live == 0:
            return _like(x, _feats(x) + const)
        if isinstance(x, SparseTensor):
            raise InputError("a batch mixing real and zero contexts needs dense tokens")
        ctx = context[:live] if context is not None else None
        y = gate_residual(x[:live], self.cross_attn(self.norm2(x[:live]), ctx, kv, backend))
        return torch.cat([y, x[live:] + const])


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def trunk_dtype_from_args(dtype: str | None, use_fp16: bool) -> torch.dtype:
    """The block dtype named by a checkpoint's JSON: ``dtype`` if given, else float16 when ``use_fp16`` (§4.6)."""
    if dtype is None:
        return torch.float16 if use_fp16 else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r} in model args; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class FlowDiT(nn.Module):
    """Trunk shared by the dense and sparse flow DiTs (§4.1–4.2, §4.6): time embedding, shared adaLN, blocks, heads.

    Constructed from the official JSON ``args``. Training-only args (``use_checkpoint``, ``initialization``) are
    accepted and ignored; unknown args raise. dtype policy (§4.6): the ``nn.Linear`` weights inside ``blocks`` are
    in the trunk dtype, every other parameter (embedders, adaLN, input/output layers, ``modulation``, norms) stays
    float32. A load pre-hook casts incoming checkpoint tensors to these dtypes, so a strict
    ``load_state_dict(..., assign=True)`` onto a meta-built model keeps the policy whatever the file stores.
    """

    #: checkpoint keys that are recomputed at run time and dropped on load (e.g. the dense model's ``rope_phases``)
    derived_keys: tuple[str, ...] = ()

    def __init__(self, *, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4.0, pe_mode: str = "rope", rope_freq: tuple[float, float] = (1.0, 10000.0),
                 dtype: str | None = None, use_fp16: bool = False, share_mod: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False, use_checkpoint: bool = False,
                 initialization: str = "vanilla", **unknown: object) -> None:
        super().__init__()
        name = type(self).__name__
        if unknown:
            raise InputError(f"{name}: unknown model args {sorted(unknown)}; is this checkpoint config for another "
                             "model class?")
        if pe_mode != "rope":
            raise InputError(f"{name}: pe_mode={pe_mode!r} is not supported (released TRELLIS.2 DiTs use 'rope')")
        if not share_mod:
            raise InputError(f"{name}: share_mod=False is not supported (released TRELLIS.2 DiTs share adaLN)")
        del use_checkpoint, initialization  # training-only
        self.resolution = resolution
        self.in_channels, self.out_channels = in_channels, out_channels
        self.model_channels, self.cond_channels = model_channels, cond_channels
        self.num_heads = num_heads or model_channels // num_head_channels
        if model_channels % self.num_heads:
            raise InputError(f"{name}: model_channels {model_channels} not divisible by {self.num_heads} heads")
        self.head_dim = model_channels // self.num_heads
        self.rope_freq = (float(rope_freq[0]), float(rope_freq[1]))
        self._dtype = trunk_dtype_from_args(dtype, use_fp16)

        self.t_embedder = TimestepEmbedder(model_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(model_channels, cond_channels, self.num_heads, mlp_ratio, qk_rms_norm,
                                           qk_rms_norm_cross)
            for _ in range(num_blocks))
        self.out_layer = nn.Linear(model_channels, out_channels)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                module.to(self._dtype)
        self.register_load_state_dict_pre_hook(_apply_policy_on_load)

    @property
    def trunk_dtype(self) -> torch.dtype:
        """The dtype the blocks run in (read from the weights, so it follows any later cast of the model)."""
        return self.blocks[0].self_attn.to_qkv.weight.dtype if len(self.blocks) else self._dtype

    def time_modulation(self, t: Tensor) -> Tensor:
        """``t [B]`` (×1000) → shared adaLN output ``mod [B, 6C]`` in the trunk dtype (computed in fp32)."""
        return self.adaLN_modulation(self.t_embedder(t)).to(self.trunk_dtype)

    def prepare_context(self, cond: Tensor, *, cache_kv: bool = True, zero_const: bool = False) -> CrossContext:
        """Prepare a fixed context ``[B, M, Cc]`` for a whole sampling stage (performance.md §4.1). ``cache_kv``:
        project every block's K/V now; ``zero_const``: if ``cond`` is all zeros (the unconditional branch), keep
        only each block's constant cross-attention output (one device sync)."""
        self._check_cond(cond)
        tokens = cond.to(self.trunk_dtype)
        if zero_const and not bool(cond.any()):
            return CrossContext(tokens, 0, None, tuple(_on_device(b, b.cross_attn.zero_context_output)
                                                       for b in self.blocks))
        kv = None
        if cache_kv:
            kv = tuple(_on_device(b, lambda b=b: b.cross_attn.project_kv(tokens)) for b in self.blocks)
        return CrossContext(tokens, int(cond.shape[0]), kv, None)

    def _check_cond(self, cond: Tensor) -> None:
        if cond.dim() != 3 or cond.shape[-1] != self.cond_channels:
            raise InputError(f"{type(self).__name__}: cond must be [B, M, {self.cond_channels}], "
                             f"got {list(cond.shape)}")

    def run_trunk(self, h: Tokens, t: Tensor, cond: Tensor | CrossContext, rope: RopeTable | None,
                  fast: FastPathConfig | None = None) -> Tokens:
        """Embedded tokens → all blocks → final non-affine LayerNorm (eps 1e-5) → output layer (§4.2). ``cond``
        may be a :class:`CrossContext`; ``fast.compile_blocks`` compiles the block for dense tokens where Triton
        runs for the trunk dtype, and ``fast``'s kernels are those that exist for the device, dtype and head size
        (:meth:`FastPathConfig.compile_on`, :meth:`FastPathConfig.block_kernels`)."""
        kvs, consts, n_live, tokens = (None,) * len(self.blocks), (None,) * len(self.blocks), None, cond
        if isinstance(cond, CrossContext):
            tokens = cond.tokens
            if not (isinstance(h, SparseTensor) and 0 < cond.n_live < h.batch_size):  # else: plain attention
                kvs = cond.kv if cond.kv is not None else kvs
                consts, n_live = (cond.const, cond.n_live) if cond.const is not None else (consts, None)
        else:
            self._check_cond(cond)
        mod = self.time_modulation(t)
        dt = self.trunk_dtype
        h = _like(h, _feats(h).to(dt))
        tokens = tokens.to(dt)
        step = nn.Module.__call__
        device = _feats(h).device
        if fast is not None and not isinstance(h, SparseTensor) and fast.compile_on(device, dt):
            step = self._compiled_step()
            _warn_if_global_module_hooks()
        rows = _feats(h).shape[:-1].numel()  # batch × tokens (dense) or packed tokens (sparse)
        kernels = fast.block_kernels(rows, device, dt, self.head_dim) if fast is not None else BlockKernels()
        for block, kv, const in zip(self.blocks, kvs, consts):
            with weights_on_device(block):  # streamed in under the 'low' VRAM preset
                h = step(block, h, mod, tokens, rope, kv, const, n_live, kernels)
        f = _feats(h).to(self.out_layer.weight.dtype)
        f = F.layer_norm(f, f.shape[-1:])
        return _like(h, self.out_layer(f))

    def _compiled_step(self):
        """The compiled block forward: one callable per model and linear kind, whose graphs dynamo shares between
        the blocks. Its guards do not see a swapped Linear class (models/fp8.py), so fp8 blocks get their own code
        object. ``dynamic=True``: token counts differ per image (static widths were measured no faster on an H200:
        Inductor uses looped reductions for width 1536 either way)."""
        fp8 = len(self.blocks) > 0 and type(self.blocks[0].self_attn.to_qkv) is not nn.Linear
        name = "_compiled_block_step_fp8" if fp8 else "_compiled_block_step"
        step = self.__dict__.get(name)
        if step is None:
            step = torch.compile(_block_forward_fp8 if fp8 else ModulatedTransformerCrossBlock.forward, dynamic=True)
            self.__dict__[name] = step
        return step

    def _check_batch(self, t: Tensor, cond: Tensor, batch: int) -> None:
        if t.dim() != 1 or t.shape[0] != batch or cond.shape[0] != batch:
            raise InputError(f"{type(self).__name__}: input has batch {batch} but t is {list(t.shape)} and cond is "
                             f"{list(cond.shape)}; pass t [B] and cond [B, M, C]")


def _warn_if_global_module_hooks() -> None:
    """Say so, once, when another package has registered global module hooks: ``torch.compile`` guards those hook
    dicts for every module call it inlines, so each change to them recompiles the block (measured on an H200 with a
    benchmark that registered one per run: a recompile each run until dynamo's limit, then eager blocks)."""
    from torch.nn.modules import module as nn_module

    names = [name for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                               "_global_backward_pre_hooks") if getattr(nn_module, name, None)]
    if names:
        from .. import capabilities as caps

        caps.note_fallback(True, "another package has registered global PyTorch module hooks "
                                 f"({', '.join(names)}): the compiled transformer blocks are compiled again whenever "
                                 "they change, which can make every generation slower; remove the extension that "
                                 "registers them, or use speed 'eager' (--speed eager)")


def _block_forward_fp8(block: ModulatedTransformerCrossBlock, *args: object) -> Tokens:
    """The block forward under another code object, so its compiled graphs (fp8 linears) are cached apart."""
    return ModulatedTransformerCrossBlock.forward(block, *args)


def _on_device(block: nn.Module, fn):
    with weights_on_device(block):
        return fn()


def _apply_policy_on_load(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Cast checkpoint tensors to the dtype of the parameter they load into; drop run-time-derived keys."""
    for key in getattr(module, "derived_keys", ()):
        state_dict.pop(prefix + key, None)
    for name, param in module.named_parameters():
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != param.dtype:
            state_dict[prefix + name] = value.to(param.dtype)
