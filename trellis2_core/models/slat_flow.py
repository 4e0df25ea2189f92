"""``SLatFlowModel``: the sparse flow DiT for shape and texture structured latents (spec §4.5).

The official ``ElasticSLatFlowModel`` only adds training-time memory control and maps to this class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import FastPathConfig
from ..errors import InputError
from ..sparse.rope import RopeTable, sparse_rope
from ..sparse.tensor import SparseTensor
from .blocks import CrossContext, FlowDiT

__all__ = ["SLatFlowModel"]


class SLatFlowModel(FlowDiT):
    """Velocity on the voxels of a sparse latent ``x`` at time ``t`` given DINOv3 tokens ``cond``.

    Self-attention runs over each batch element's voxels (RoPE on the raw ``coords[:, 1:]``); cross-attention of
    each batch element to its own context. The texture models take the normalised shape latent as ``concat_cond``
    (channels appended after ``x``'s, §4.5).
    """

    def forward(self, x: SparseTensor, t: Tensor, cond: Tensor | CrossContext,
                concat_cond: SparseTensor | None = None, fast: FastPathConfig | None = None) -> SparseTensor:
        """``x`` feats ``[N, C]``, ``t [B]`` float (= 1000·t), ``cond [B, M, Cc]`` → velocity feats ``[N, Cout]``.

        The result lives on ``x``'s voxels, in ``x``'s row order, and shares its derived-map cache. ``cond`` may be
        a prepared :class:`CrossContext`; ``fast`` selects fast-path switches (``config.py``).
        """
        if not isinstance(x, SparseTensor):
            raise InputError(f"SLatFlowModel expects a SparseTensor, got {type(x).__name__}")
        feats = x.feats  # [N, C]
        if concat_cond is not None:
            if concat_cond.coords is not x.coords and not torch.equal(concat_cond.coords, x.coords):
                raise InputError("concat_cond must be on the same voxels (same coords, same row order) as x")
            feats = torch.cat([feats, concat_cond.feats.to(feats.dtype)], dim=-1)  # §4.5: x first
        if feats.dim() != 2 or feats.shape[1] != self.in_channels:
            raise InputError(f"SLatFlowModel expects {self.in_channels} input channels (x + concat_cond), got "
                             f"{list(feats.shape)}")
        self._check_batch(t, cond, x.batch_size)
        h = x.replace(self.input_layer(feats.to(self.input_layer.weight.dtype)))
        rope = sparse_rope(h, self.head_dim, self.rope_freq)
        dense_rope = _dense_view_rope(h, rope) if fast is not None and fast.use_dense_tokens() else None
        if dense_rope is None:
            return self.run_trunk(h, t, cond, rope, fast)
        out = self.run_trunk(h.feats.view(h.batch_size, -1, h.feats.shape[-1]), t, cond, dense_rope, fast)
        return h.replace(out.flatten(0, 1))  # [N, Cout], rows as x


def _dense_view_rope(x: SparseTensor, rope: RopeTable) -> RopeTable | None:
    """The RoPE table ``[L, D/2]`` of a dense ``[B, L, C]`` view of ``x``, or None when there is no such view.

    The view exists when every batch element has ``L`` voxels at the same positions in the same order (one sample,
    or a CFG pair made of one sample twice); checked once per voxel set (one device sync).
    """
    def same_positions() -> bool:
        lens = x.seqlens
        if len(set(lens)) != 1 or lens[0] == 0:
            return False
        pos = x.coords[:, 1:].view(len(lens), lens[0], 3)
        return bool((pos == pos[:1]).all())

    if not x.cache.get_or_create("dense_view", same_positions):
        return None
    n = x.seqlens[0]
    return rope[0][:n], rope[1][:n]
