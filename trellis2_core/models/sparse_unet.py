"""The sparse U-Net decoder trunk shared by the shape and texture decoders (``SparseUnetVaeDecoder``, spec §5.2).

``from_latent`` (fp32) → stages of ``SparseConvNeXtBlock3d`` each ending (except the last stage) with a
``SparseResBlockC2S3d`` ×2 channel-to-space up-block → fp32 head (non-affine LayerNorm eps 1e-5 → ``output_layer``).
With ``use_fp16`` every conv/linear inside ``blocks`` is float16 while LayerNorm parameters stay float32 and norms
compute in float32 (§5.2, §13 item 8). Up-blocks either predict their subdivision (``pred_subdiv``) or follow
caller-given subdivision logits with the same row order (the texture decoder follows the shape decoder's ``subs``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..sparse import LayerNorm32, SparseLinear, SparseTensor, SubMConv3d, silu
from ..sparse.layers import rowwise_in_chunks
from ..sparse.resample import Subdivision, expand_children, subdivide
from .streaming import trim_cached_memory, weights_on_device

__all__ = ["SparseConvNeXtBlock3d", "SparseResBlockC2S3d", "SparseUnetVaeDecoder"]

_BLOCK = "SparseConvNeXtBlock3d"
_UP_BLOCK = "SparseResBlockC2S3d"


class SparseConvNeXtBlock3d(nn.Module):
    """``x + MLP(LN(conv(x)))`` with a full (not depth-wise) 3×3×3 submanifold conv and a 4× SiLU MLP (§5.2)."""

    def __init__(self, channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = SubMConv3d(channels, channels, dtype=dtype)
        self.norm = LayerNorm32(channels, eps=1e-6)  # affine, fp32 params
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels, dtype=dtype), nn.SiLU(), nn.Linear(4 * channels, channels, dtype=dtype)
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.norm(self.conv(x))  # [N, C]
        fc1, _, fc2 = self.mlp  # SiLU in place on the 4C hidden features (650 MB at the 1024 L3 level)
        out = fc2(F.silu(fc1(h.feats), inplace=True))
        return x.replace(out.add_(x.feats))  # the same sum as x + mlp(h), without one more [N, C] buffer


def _check_layout(sub: Subdivision, x: SparseTensor) -> Subdivision:
    """A given child layout must address ``x``'s rows (the encoder's grouping at the same level)."""
    n = int(sub.parent.shape[0])
    if sub.slot.shape != (n,) or sub.coords.shape != (n, 4) or (n and int(sub.parent.max()) >= x.num_voxels):
        raise InputError(f"the child layout does not belong to this decoder level ({x.num_voxels} voxels); pass the "
                         "shape encoder's layouts of the same mesh, coarse to fine")
    return sub


def _subdivision_mask(logits: SparseTensor | Tensor, x: SparseTensor) -> Tensor:
    """``logits > 0`` as a bool ``[N, 8]`` mask, checking that the logits belong to ``x``'s rows (§13 item 13)."""
    feats = logits.feats if isinstance(logits, SparseTensor) else logits
    if feats.shape != (x.num_voxels, 8):
        raise InputError(
            f"subdivision logits must be [{x.num_voxels}, 8] (one row per voxel of the up-block input), got "
            f"{list(feats.shape)}; guide subs must come from the shape decoder run on the same coordinates"
        )
    if isinstance(logits, SparseTensor) and logits.coords is not x.coords and not torch.equal(logits.coords, x.coords):
        raise InputError("subdivision logits are on other voxels (or in another row order) than the up-block input; "
                         "guide subs must come from the shape decoder run on the same latent coordinates")
    return feats > 0


class SparseResBlockC2S3d(nn.Module):
    """Residual ×2 up-block: channel-to-space of ``conv(SiLU(LN(x)))`` guided by subdivision logits (§5.2).

    Child slot ``s = dx + 2·dy + 4·dz``; children are parent-major, slot-ascending. The skip path spreads the
    parent's ``C`` channels as ``[8, C/8]`` over the children and repeats each channel ``Co/(C/8)`` times.
    """

    def __init__(self, channels: int, out_channels: int, pred_subdiv: bool, dtype: torch.dtype) -> None:
        super().__init__()
        if channels % 8 or out_channels % (channels // 8):
            raise InputError(f"C2S up-block {channels}→{out_channels}: channels must be a multiple of 8 and "
                             f"out_channels a multiple of channels/8")
        self.channels = channels
        self.out_channels = out_channels
        self.pred_subdiv = pred_subdiv
        if pred_subdiv:
            self.to_subdiv = SparseLinear(channels, 8, dtype=dtype)
        self.norm1 = LayerNorm32(channels, eps=1e-6)
        self.conv1 = SubMConv3d(channels, out_channels * 8, dtype=dtype)
        self.norm2 = LayerNorm32(out_channels, eps=1e-6, elementwise_affine=False)
        self.conv2 = SubMConv3d(out_channels, out_channels, dtype=dtype)

    def subdivision(self, x: SparseTensor, subdiv: SparseTensor | Tensor | Subdivision | None = None
                    ) -> tuple[Subdivision, SparseTensor | None]:
        """The children of ``x`` and the predicted logits (``None`` when ``subdiv`` was given).

        ``subdiv`` may also be a ready child layout (:class:`Subdivision`): the texturing pipeline decodes onto the
        shape encoder's voxels, in the encoder's row order (§11 step 6)."""
        if isinstance(subdiv, Subdivision):
            return _check_layout(subdiv, x), None
        logits = None
        if self.pred_subdiv and subdiv is None:
            logits = self.to_subdiv(x)  # §13 item 15: on the block input, before norm1; [N, 8]
            subdiv = logits
        if subdiv is None:
            raise InputError("this decoder does not predict subdivisions (pred_subdiv=false): pass the shape "
                             "decoder's subdivision logits as guide_subs")
        return subdivide(x, _subdivision_mask(subdiv, x)), logits

    def forward(self, x: SparseTensor, subdiv: SparseTensor | Tensor | Subdivision | None = None
                ) -> tuple[SparseTensor, SparseTensor | None]:
        """``x [N, C]`` → ``(children [M, Co], predicted logits [N, 8] or None)``."""
        sub, logits = self.subdivision(x, subdiv)
        h = self.conv1(silu(self.norm1(x)))  # [N, 8·Co]
        y = SparseTensor(expand_children(h.feats, sub), sub.coords, validate=False)  # [M, Co]
        del h  # the largest tensor of the block (650 MB at the last 1024 level): free it before the child level
        t = self.norm2(y)  # [M, Co] at the child level: free y and activate in place before conv2 (two buffers of
        del y  # this size instead of four: 1.4 GB less at the last 1536 level)
        y = self.conv2(t.replace(F.silu(t.feats, inplace=True)))
        del t
        skip = expand_children(x.feats, sub)  # [M, C/8]
        skip = skip.repeat_interleave(self.out_channels // (self.channels // 8), dim=1)  # [M, Co]
        return y.replace(y.feats.add_(skip)), logits  # conv2's output is ours: add the skip in place


def _check_block_config(model_channels: Sequence[int], num_blocks: Sequence[int], block_type: Sequence[str],
                        up_block_type: Sequence[str], block_args: Sequence[dict] | None) -> None:
    levels = len(model_channels)
    if levels < 1 or len(num_blocks) != levels or len(block_type) != levels or len(up_block_type) != levels - 1:
        raise InputError(
            f"SparseUnetVaeDecoder config mismatch: {levels} model_channels, {len(num_blocks)} num_blocks, "
            f"{len(block_type)} block_type, {len(up_block_type)} up_block_type (need L, L, L, L-1)"
        )
    bad = sorted({t for t in block_type if t != _BLOCK} | {t for t in up_block_type if t != _UP_BLOCK})
    if bad:
        raise InputError(f"unsupported decoder block types {bad}; the released decoders use {_BLOCK} and {_UP_BLOCK}")
    for args in block_args or []:
        extra = set(args) - {"use_checkpoint"}
        if extra:
            raise InputError(f"unsupported block_args {sorted(extra)} (only the training-only use_checkpoint)")


class SparseUnetVaeDecoder(nn.Module):
    """Sparse U-Net VAE decoder: latent ``[N, latent_channels]`` → ``[M, out_channels]`` at 16× resolution (§5.2).

    Args follow the official JSON (``out_channels``, ``model_channels``, ``latent_channels``, ``num_blocks``,
    ``block_type``, ``up_block_type``, ``block_args``, ``use_fp16``, ``pred_subdiv``); ``block_args`` and
    ``use_checkpoint`` are training-only and ignored.
    """

    def __init__(self, out_channels: int, model_channels: Sequence[int], latent_channels: int,
                 num_blocks: Sequence[int], block_type: Sequence[str], up_block_type: Sequence[str],
                 block_args: Sequence[dict] | None = None, use_fp16: bool = False, pred_subdiv: bool = True,
                 use_checkpoint: bool = False, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise InputError(f"{type(self).__name__} got unknown args: {', '.join(sorted(unknown))}")
        _check_block_config(model_channels, num_blocks, block_type, up_block_type, block_args)
        del use_checkpoint  # training-only
        self.out_channels = out_channels
        self.model_channels = list(model_channels)
        self.latent_channels = latent_channels
        self.pred_subdiv = pred_subdiv
        self.dtype = torch.float16 if use_fp16 else torch.float32  # trunk dtype (§5.2)
        self.from_latent = SparseLinear(latent_channels, model_channels[0])  # fp32
        stages = []
        for i, ch in enumerate(model_channels):
            stage: list[nn.Module] = [SparseConvNeXtBlock3d(ch, self.dtype) for _ in range(num_blocks[i])]
            if i < len(model_channels) - 1:
                stage.append(SparseResBlockC2S3d(ch, model_channels[i + 1], pred_subdiv, self.dtype))
            stages.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(stages)
        self.output_layer = SparseLinear(model_channels[-1], out_channels)  # fp32

    @property
    def num_up_blocks(self) -> int:
        return len(self.model_channels) - 1

    def _check_latent(self, x: SparseTensor) -> None:
        if not isinstance(x, SparseTensor):
            raise InputError(f"{type(self).__name__} expects a SparseTensor latent, got {type(x).__name__}")
        if x.feats.dim() != 2 or x.feats.shape[1] != self.latent_channels:
            raise InputError(f"{type(self).__name__} expects latent feats [N, {self.latent_channels}], got "
                             f"{list(x.feats.shape)}")

    def _embed(self, x: SparseTensor) -> SparseTensor:
        w = self.from_latent.weight
        return x.replace(self.from_latent(x.feats.to(w.dtype)).to(self.dtype))  # [N, C0]

    def _guide(self, guide_subs: Sequence[SparseTensor | Tensor | Subdivision] | None, i: int
               ) -> SparseTensor | Tensor | Subdivision | None:
        if guide_subs is None:
            return None
        if len(guide_subs) != self.num_up_blocks:
            raise InputError(f"guide_subs must hold {self.num_up_blocks} subdivision tensors, got {len(guide_subs)}")
        return guide_subs[i]

    def forward_with_subs(self, x: SparseTensor,
                          guide_subs: Sequence[SparseTensor | Tensor | Subdivision] | None = None
                          ) -> tuple[SparseTensor, list[SparseTensor]]:
        """Decode ``x``; returns ``(raw [M, out_channels] fp32, predicted subdivision logits per up-block)``.

        ``guide_subs[i]`` (logits ``[N_i, 8]`` on up-block ``i``'s input rows, binarised ``> 0``, or a child layout
        :class:`~trellis2_core.sparse.resample.Subdivision`) overrides the prediction; it is required when
        ``pred_subdiv`` is false. ``subs`` is empty when nothing was predicted.
        """
        self._check_latent(x)
        h = self._embed(x)
        subs: list[SparseTensor] = []
        for i, stage in enumerate(self.blocks):
            for block in stage:
                if isinstance(block, SparseResBlockC2S3d):
                    trim_cached_memory(self)  # the next level's tensors are 4× larger (medium/low presets only)
                with weights_on_device(block):  # streamed in under the 'low' VRAM preset
                    if isinstance(block, SparseResBlockC2S3d):
                        h, logits = block(h, self._guide(guide_subs, i))
                        if logits is not None:
                            subs.append(logits)
                    else:
                        h = block(h)
        trim_cached_memory(self)
        w = self.output_layer.weight
        # head in fp32 with a non-affine norm (§5.2), normalised and projected in row chunks: the fp32 copy of the
        # finest level's features (1.4 GB at 1536) never exists whole, only the [M, out_channels] result
        feats = rowwise_in_chunks(lambda r: self.output_layer(F.layer_norm(r.float(), r.shape[-1:], eps=1e-5)),
                                  h.feats, w.dtype, self.out_channels)
        return h.replace(feats), subs

    def forward(self, x: SparseTensor, guide_subs: Sequence[SparseTensor | Tensor | Subdivision] | None = None
                ) -> SparseTensor:
        """Decode ``x`` → raw output ``[M, out_channels]`` (see :meth:`forward_with_subs`)."""
        return self.forward_with_subs(x, guide_subs)[0]

    def upsample_coords(self, x: SparseTensor, upsample_times: int) -> Tensor:
        """Coordinates ``[M, 4]`` int32 reached after ``upsample_times`` up-blocks with predicted subdivisions.

        Runs the stages ``0..upsample_times-1`` (the last up-block only predicts its subdivision: its features are
        never used), as the official ``upsample`` (§1.3 step 2, §5.2).
        """
        self._check_latent(x)
        if not 0 <= upsample_times <= self.num_up_blocks:
            raise InputError(f"upsample_times must be in 0..{self.num_up_blocks}, got {upsample_times}")
        if not self.pred_subdiv:
            raise InputError("upsample needs a decoder that predicts its subdivisions (pred_subdiv=true)")
        if upsample_times == 0:
            return x.coords
        h = self._embed(x)
        for i in range(upsample_times):
            for block in self.blocks[i]:
                if isinstance(block, SparseResBlockC2S3d):
                    trim_cached_memory(self)
                with weights_on_device(block):
                    if isinstance(block, SparseResBlockC2S3d):
                        if i == upsample_times - 1:
                            sub, _ = block.subdivision(h)
                            return sub.coords
                        h, _ = block(h)
                    else:
                        h = block(h)
        raise AssertionError("unreachable: every stage below the last ends with an up-block")
