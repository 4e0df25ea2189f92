"""ComfyUI ``IMAGE``/``MASK`` tensors ↔ PIL images (glue only; the image maths lives in ``trellis2_core``).

ComfyUI conventions: ``IMAGE`` is float ``[B, H, W, C]`` in 0..1 (C = 3, sometimes 4 with alpha), ``MASK`` is float
``[B, H, W]`` or ``[H, W]`` in 0..1. ``LoadImage`` outputs ``MASK = 1 − alpha`` (1 where the picture is
transparent); this pack's own masks mean 1 = object.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trellis2_core.errors import InputError

__all__ = ["batch_size", "to_pil", "mask_at", "from_pil", "masks_from"]


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"expected a ComfyUI IMAGE [B, H, W, 3 or 4], got {shape}")


def batch_size(image: Tensor) -> int:
    _check_image(image)
    return int(image.shape[0])


def to_pil(image: Tensor, index: int = 0) -> Image.Image:
    """Batch item ``index`` as an 8-bit PIL image (RGB, or RGBA when the IMAGE carries alpha)."""
    _check_image(image)
    arr = (image[index].detach().cpu().float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], mode="L").convert("RGB")
    return Image.fromarray(arr, mode="RGBA" if arr.shape[-1] == 4 else "RGB")


def mask_at(mask: Tensor | None, index: int) -> Tensor | None:
    """Mask ``[H, W]`` float for batch item ``index`` (a single mask serves every item)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dim() not in (2, 3):
        shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise InputError(f"expected a ComfyUI MASK [B, H, W] or [H, W], got {shape}")
    if mask.dim() == 2:
        return mask.detach().cpu().float()
    return mask[min(index, mask.shape[0] - 1)].detach().cpu().float()


def from_pil(images: list[Image.Image]) -> Tensor:
    """PIL images of one size → ComfyUI IMAGE ``[B, H, W, 3]`` float32 (alpha dropped)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays, 0))


def masks_from(images: list[Image.Image]) -> Tensor:
    """Alpha channels of RGBA PIL images → MASK ``[B, H, W]`` float32, 1 = object (opaque)."""
    arrays = [np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays, 0))
