"""ComfyUI ``IMAGE``/``MASK`` tensors ↔ PIL images (glue only; the image maths lives in ``trellis2_core``).

ComfyUI conventions: ``IMAGE`` is float ``[B, H, W, C]`` in 0..1 (C = 3, sometimes 4 with alpha), ``MASK`` is float
``[B, H, W]`` or ``[H, W]`` in 0..1. ``LoadImage`` outputs ``MASK = 1 − alpha`` (1 where the picture is
transparent); this pack's own masks mean 1 = object.

What comes in is checked once per node call (:func:`check_image`, :func:`check_mask`), and the message names the
node and the input:

* converted, because the meaning is unambiguous: ``uint8`` tensors (0..255, divided by 255), ``bool`` masks,
  1-channel images (grey), 4-channel images (RGBA: the alpha is the transparency), values outside 0..1 by at most
  :data:`RANGE_TOLERANCE` (rounding of upstream nodes; clamped);
* refused: other ranks or channel counts, empty batches or 0-pixel images, NaN/±Inf, other integer dtypes, values
  further outside 0..1 (a [-1, 1] or 0..255 float tensor, a latent), masks whose batch or size does not fit the
  image.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trellis2_core.errors import InputError

__all__ = ["check_image", "check_mask", "batch_size", "to_pil", "mask_at", "from_pil", "masks_from",
           "RANGE_TOLERANCE"]

RANGE_TOLERANCE = 0.01  # values this far outside 0..1 are rounding noise and get clamped
_CHANNELS = (1, 3, 4)


def _where(node: str, name: str) -> str:
    return f"{node}: input '{name}'" if node else f"input '{name}'"


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _to_unit_float(t: Tensor, where: str, kind: str) -> Tensor:
    """float32 CPU copy of ``t`` on 0..1: uint8 / bool converted, other integers refused, NaN/Inf and values
    outside 0..1 (beyond the tolerance) refused."""
    if t.dtype == torch.uint8:
        return t.detach().cpu().to(torch.float32) / 255.0
    if t.dtype == torch.bool:
        return t.detach().cpu().to(torch.float32)
    if not t.is_floating_point():
        raise InputError(f"{where}: {kind} has dtype {str(t.dtype).replace('torch.', '')}; a ComfyUI {kind} is a "
                         "float tensor with values 0..1 (uint8 0..255 is converted too)")
    x = t.detach().cpu().to(torch.float32)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan = int(torch.isnan(x).sum())
        inf = int(x.numel() - int(finite.sum()) - nan)
        raise InputError(f"{where}: {kind} contains {nan} NaN and {inf} infinite values; the node that made it "
                         "failed (e.g. a VAE decode overflowing in float16): fix or replace that node")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            hint = ("it looks like 0..255 values: divide by 255" if hi > 2.0 and lo >= 0.0 else
                    "it looks like a [-1, 1] tensor: map it with (x + 1) / 2" if lo < 0.0 and hi <= 1.0 + RANGE_TOLERANCE
                    else "it is not an image: connect an IMAGE output (e.g. VAE Decode or Load Image)")
            raise InputError(f"{where}: {kind} values range from {lo:g} to {hi:g}, but a ComfyUI {kind} must be "
                             f"0..1; {hint}")
        if lo < 0.0 or hi > 1.0:
            x = x.clamp_(0.0, 1.0)
    return x


def check_image(image: object, name: str = "image", node: str = "") -> Tensor:
    """A ComfyUI IMAGE checked and normalised: float32 CPU ``[B, H, W, C]`` on 0..1, C in (1, 3, 4), B ≥ 1.

    Raises:
        InputError: naming ``node`` and the input ``name``: not a tensor, wrong rank or channel count, empty batch or
            image, NaN/Inf, unsupported dtype, values outside 0..1.
    """
    where = _where(node, name)
    if not isinstance(image, Tensor):
        raise InputError(f"{where} must be a ComfyUI IMAGE tensor [B, H, W, C], got {type(image).__name__}; "
                         "connect an IMAGE output (e.g. Load Image)")
    if image.dim() != 4:
        hint = (" (a single image needs a batch dimension: [1, H, W, C])" if image.dim() == 3 else
                " (a MASK is not an IMAGE: use Convert Mask to Image)" if image.dim() == 2 else "")
        raise InputError(f"{where}: expected a ComfyUI IMAGE [B, H, W, C], got shape {_shape(image)}{hint}")
    b, h, w, c = (int(v) for v in image.shape)
    if b == 0:
        raise InputError(f"{where}: the IMAGE batch is empty (shape {_shape(image)}); connect a node that outputs "
                         "at least one image")
    if h == 0 or w == 0:
        raise InputError(f"{where}: the images have no pixels ({w}x{h}); connect a real picture")
    if c not in _CHANNELS:
        hint = " (channels-first [B, C, H, W]? ComfyUI images are channels-last)" if h in _CHANNELS else ""
        raise InputError(f"{where}: IMAGE has {c} channels (shape {_shape(image)}); it must have 3 (RGB) or 4 "
                         f"(RGBA, alpha = transparency), or 1 (grey){hint}")
    return _to_unit_float(image, where, "IMAGE")


def check_mask(mask: object, image: Tensor, name: str = "mask", node: str = "", *,
               same_size: bool = True) -> Tensor | None:
    """A ComfyUI MASK for ``image`` (already checked) as float32 CPU ``[B or 1, H, W]`` on 0..1, or None.

    The mask batch must be 1 (one mask for every image) or the image batch. With ``same_size`` its height and
    width must be the image's; otherwise (LoadImage's MASK, which is 64×64 for pictures without alpha) a mask of
    another size is returned as it is and the caller decides.

    Raises:
        InputError: naming ``node`` and the input ``name``.
    """
    if mask is None:
        return None
    where = _where(node, name)
    if not isinstance(mask, Tensor):
        raise InputError(f"{where} must be a ComfyUI MASK tensor [B, H, W], got {type(mask).__name__}")
    if mask.dim() == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]  # [B, H, W, 1], as some nodes output
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        hint = " (an IMAGE is not a MASK: use Convert Image to Mask)" if mask.dim() == 4 else ""
        raise InputError(f"{where}: expected a ComfyUI MASK [B, H, W] or [H, W], got shape {_shape(mask)}{hint}")
    mb, mh, mw = (int(v) for v in mask.shape)
    b, h, w = (int(v) for v in image.shape[:3])
    if mb == 0 or mh == 0 or mw == 0:
        raise InputError(f"{where}: the MASK is empty (shape {_shape(mask)}); connect the mask of this image")
    if mb not in (1, b):
        raise InputError(f"{where}: {mb} masks for {b} images; give one mask per image or a single mask for all")
    if same_size and (mh, mw) != (h, w):
        raise InputError(f"{where}: the MASK is {mw}x{mh} but the image is {w}x{h} (W x H); connect the mask made "
                         "for this image at its size (e.g. Remove Background's MASK output together with its IMAGE)")
    return _to_unit_float(mask, where, "MASK")


def batch_size(image: Tensor) -> int:
    """Number of images in a checked IMAGE tensor."""
    if not isinstance(image, Tensor) or image.dim() != 4:
        raise InputError(f"expected a ComfyUI IMAGE [B, H, W, 3 or 4], got {_shape(image)}")
    return int(image.shape[0])


def to_pil(image: Tensor, index: int = 0) -> Image.Image:
    """Batch item ``index`` of a checked IMAGE as an 8-bit PIL image (RGB, or RGBA when the IMAGE carries alpha)."""
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[-1] not in _CHANNELS:
        raise InputError(f"expected a ComfyUI IMAGE [B, H, W, 3 or 4], got {_shape(image)}")
    item = image[index].detach().cpu()
    item = item.to(torch.float32) / 255.0 if item.dtype == torch.uint8 else item.float()
    arr = (item.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], mode="L").convert("RGB")
    return Image.fromarray(arr, mode="RGBA" if arr.shape[-1] == 4 else "RGB")


def mask_at(mask: Tensor | None, index: int) -> Tensor | None:
    """Mask ``[H, W]`` float for batch item ``index`` of a checked MASK (a single mask serves every item)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dim() not in (2, 3):
        raise InputError(f"expected a ComfyUI MASK [B, H, W] or [H, W], got {_shape(mask)}")
    if mask.dim() == 2:
        return mask.detach().cpu().float()
    count = int(mask.shape[0])
    if count != 1 and index >= count:
        raise InputError(f"no mask for image {index}: the MASK batch holds {count}; give one mask per image")
    return mask[0 if count == 1 else index].detach().cpu().float()


def from_pil(images: list[Image.Image]) -> Tensor:
    """PIL images of one size → ComfyUI IMAGE ``[B, H, W, 3]`` float32 (alpha dropped)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays, 0))


def masks_from(images: list[Image.Image]) -> Tensor:
    """Alpha channels of RGBA PIL images → MASK ``[B, H, W]`` float32, 1 = object (opaque)."""
    arrays = [np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays, 0))
