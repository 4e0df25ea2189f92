"""``SparseStructureFlowModel``: the dense flow DiT on the 16³×8 sparse-structure latent (spec §4.4)."""
from __future__ import annotations

from torch import Tensor

from ..config import FastPathConfig
from ..errors import InputError
from ..sparse.rope import grid_rope
from ..sparse.tensor import DerivedCache
from .blocks import CrossContext, FlowDiT

__all__ = ["SparseStructureFlowModel"]


class SparseStructureFlowModel(FlowDiT):
    """Velocity ``v [B, C, R, R, R]`` of the dense latent ``x`` at time ``t`` given DINOv3 tokens ``cond``.

    Tokens are the grid cells flattened with z fastest; self-attention uses 3-D RoPE on the raw cell indices.
    The official checkpoint may carry a complex ``rope_phases [R³, D/2]`` buffer; it is not a parameter here
    (the table is recomputed and cached per device) and is dropped on load.
    """

    derived_keys = ("rope_phases",)

    def __init__(self, **args: object) -> None:
        super().__init__(**args)
        self._rope_cache = DerivedCache(max_entries=4)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | CrossContext,
                fast: FastPathConfig | None = None) -> Tensor:
        """``x [B, Cin, R, R, R]``, ``t [B]`` float (= 1000·t), ``cond [B, M, Cc]`` → ``[B, Cout, R, R, R]``.

        ``cond`` may be a prepared :class:`CrossContext`; ``fast`` selects fast-path switches (``config.py``).
        """
        r = self.resolution
        if x.dim() != 5 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (r, r, r):
            raise InputError(f"SparseStructureFlowModel expects x [B, {self.in_channels}, {r}, {r}, {r}], "
                             f"got {list(x.shape)}")
        b = x.shape[0]
        self._check_batch(t, cond, b)
        h = x.reshape(b, self.in_channels, -1).transpose(1, 2)  # [B, R³, Cin], z fastest (§4.4)
        h = self.input_layer(h.to(self.input_layer.weight.dtype))
        rope = grid_rope(x.shape[2:], self.head_dim, self.rope_freq, device=x.device, cache=self._rope_cache)
        h = self.run_trunk(h, t, cond, rope, fast)  # [B, R³, Cout] fp32
        return h.transpose(1, 2).reshape(b, self.out_channels, *x.shape[2:])
