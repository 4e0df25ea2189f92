"""Image preprocessing before conditioning: alpha, downscale, foreground crop, premultiply (spec §2).

The output is an RGB PIL image with the object premultiplied on black, cropped square-ish around the opaque
pixels, exactly as the official ``preprocess_image`` produces it (golden cases ``preprocess_*`` are bit-exact).
Background removal (matting, §2 step 3) is not part of this module: the caller either passes an RGBA image whose
transparency marks the background, or a foreground mask.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np
from PIL import Image

from ..errors import InputError

__all__ = [
    "MaskLike", "has_usable_alpha", "downscale", "attach_mask", "crop_to_foreground", "premultiply",
    "preprocess_image", "DEFAULT_MAX_SIZE", "ALPHA_THRESHOLD", "MIN_FOREGROUND_SIDE", "check_image_size",
]

DEFAULT_MAX_SIZE = 1024  # §2 step 2: longest side before matting
ALPHA_THRESHOLD = 204  # §2 step 4: foreground = alpha > 0.8*255 (i.e. >= 205 for uint8)
#: smallest crop side (pixels) worth conditioning on: below it the object is a few pixels blown up to 512/1024 px
#: (a 1- or 2-pixel object even crops to 0×0, which the official code turns into a black picture)
MIN_FOREGROUND_SIDE = 8

_MASK_TOLERANCE = 0.01  # float masks may overshoot 0..1 by rounding; beyond this they are on another scale

MaskLike = Union[Image.Image, np.ndarray, Any]  # PIL image, numpy array or a 2-D torch tensor


def check_image_size(image: Image.Image, what: str = "image") -> None:
    """InputError unless ``image`` is a PIL image with at least one pixel."""
    if not isinstance(image, Image.Image):
        raise InputError(f"{what} must be a PIL.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise InputError(f"{what} is empty ({image.width}x{image.height} pixels); pass a picture of the object")


def has_usable_alpha(image: Image.Image) -> bool:
    """§2 step 1: only mode RGBA with at least one alpha value below 255 counts as already matted."""
    if image.mode != "RGBA" or image.width < 1 or image.height < 1:
        return False
    lo, _hi = image.getchannel("A").getextrema()
    return lo < 255


def _scaled_size(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """§2 step 2: ``scale = min(1, max_size / max(W, H))``; sizes truncated with int()."""
    w, h = size
    scale = min(1, max_size / max(w, h))
    if scale < 1:
        return int(w * scale), int(h * scale)
    return w, h


def downscale(image: Image.Image, max_size: int = DEFAULT_MAX_SIZE) -> Image.Image:
    """§2 step 2: LANCZOS downscale so that the longest side is at most ``max_size`` (never upscales)."""
    if max_size < 1:
        raise InputError(f"max_size must be a positive number of pixels, got {max_size}")
    new_size = _scaled_size(image.size, max_size)
    if new_size != image.size:
        return image.resize(new_size, Image.LANCZOS)
    return image


def _mask_to_l(mask: MaskLike) -> Image.Image:
    """A caller mask as a mode-``L`` image (255 = foreground)."""
    if isinstance(mask, Image.Image):
        if mask.mode in ("L", "1"):
            return mask.convert("L")
        if mask.mode in ("LA", "RGBA", "PA"):
            return mask.getchannel("A")
        raise InputError(
            f"mask image has mode {mask.mode!r}; pass a single-channel mask (mode 'L', 255 = foreground)"
        )
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):  # a torch tensor, e.g. a ComfyUI MASK
        mask = mask.detach().cpu().float().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"mask must be 2-D [H, W], got shape {list(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("mask contains NaN or infinite values; pass a mask of 0..1 floats (1 = object)")
        if arr.size and (float(arr.min()) < -_MASK_TOLERANCE or float(arr.max()) > 1 + _MASK_TOLERANCE):
            raise InputError(
                f"float mask values range from {float(arr.min()):g} to {float(arr.max()):g}, but a float mask must "
                "be 0..1 (1 = object); divide a 0..255 mask by 255, or pass it as uint8")
        # same float -> uint8 conversion as the official matting output (x255, truncation)
        arr = (np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    elif arr.dtype == np.uint8:
        pass
    else:
        raise InputError(f"mask dtype {arr.dtype} not supported; use bool, uint8 (0..255) or float (0..1)")
    return Image.fromarray(np.ascontiguousarray(arr), mode="L")


def attach_mask(image: Image.Image, mask: MaskLike) -> Image.Image:
    """The image as RGBA with ``mask`` as its alpha channel (sizes must agree)."""
    m = _mask_to_l(mask)
    if m.size != image.size:
        raise InputError(f"mask size {m.size} (W, H) does not match image size {image.size}")
    rgba = image.convert("RGB")
    rgba.putalpha(m)
    return rgba


def crop_to_foreground(rgba: Image.Image) -> Image.Image:
    """§2 step 4: square crop centred on the bbox of alpha > 204, side ``2*(size//2)``, zero fill outside.

    Raises:
        InputError: no foreground pixel ("empty foreground"), or a crop smaller than
            :data:`MIN_FOREGROUND_SIDE` pixels ("foreground too small").
    """
    if rgba.mode != "RGBA":
        raise InputError(f"crop_to_foreground needs an RGBA image, got mode {rgba.mode!r}")
    alpha = np.asarray(rgba.getchannel("A"))  # [H, W] uint8
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if xs.size == 0:
        raise InputError(
            "empty foreground: no pixel has alpha above 80 % (204/255), so there is no object to crop; "
            "check that the mask/alpha marks the object (white/opaque) and not the background, or use a "
            "stronger mask"
        )
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())  # inclusive
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) // 2
    if 2 * half < MIN_FOREGROUND_SIDE:
        raise InputError(
            f"foreground too small: {xs.size} px with alpha above 80 % in a {x1 - x0 + 1}x{y1 - y0 + 1} box of the "
            f"{rgba.width}x{rgba.height} image, which crops to {2 * half}x{2 * half} (at least "
            f"{MIN_FOREGROUND_SIDE}x{MIN_FOREGROUND_SIDE} is needed); use a larger picture of the object, or check "
            "that the mask/alpha marks the whole object (white/opaque), not a speck"
        )
    # PIL rounds float box coordinates itself (half to even), as the official call does
    return rgba.crop((cx - half, cy - half, cx + half, cy + half))


def premultiply(rgba: Image.Image) -> Image.Image:
    """§2 step 5: ``rgb * alpha`` in float32 on [0,1], back to uint8 by x255 and truncation; RGB output."""
    arr = np.asarray(rgba.convert("RGBA")).astype(np.float32) / 255  # [H, W, 4]
    rgb = arr[:, :, :3] * arr[:, :, 3:4]
    return Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB")


def preprocess_image(image: Image.Image, mask: MaskLike | None = None, *,
                     max_size: int = DEFAULT_MAX_SIZE) -> Image.Image:
    """Official ``preprocess_image`` (§2 steps 1, 2, 4, 5) -> RGB PIL image, object premultiplied on black.

    Args:
        image: any PIL image. An RGBA image with some alpha < 255 is used as it is (its alpha is the matte).
        mask: optional foreground mask (PIL ``L``/``1`` image, or a 2-D bool / uint8 0..255 / float 0..1 array)
            at the size of ``image`` or of its downscaled size; it replaces background removal and takes
            precedence over an alpha channel.
        max_size: longest side before cropping (official: 1024).

    Raises:
        InputError: no usable alpha and no mask (background removal needed), bad mask, or empty foreground.
    """
    check_image_size(image)
    if mask is not None:
        m = _mask_to_l(mask)
        target = _scaled_size(image.size, max_size)
        if m.size == image.size:
            rgba = downscale(attach_mask(image, m), max_size)
        elif m.size == target:
            rgba = attach_mask(downscale(image.convert("RGB"), max_size), m)
        else:
            raise InputError(
                f"mask size {m.size} (W, H) matches neither the image {image.size} nor its downscaled size {target}"
            )
    elif has_usable_alpha(image):
        rgba = downscale(image, max_size)
    else:
        raise InputError(_no_alpha_message(image))
    return premultiply(crop_to_foreground(rgba))


def _no_alpha_message(image: Image.Image) -> str:
    """Actionable error for an image without a usable alpha channel and no mask."""
    base = (
        f"the image (mode {image.mode!r}) has no transparency marking the background, and automatic background "
        "removal was not requested here; pass a foreground mask, an RGBA image whose background is transparent, "
        "or use trellis2_core.preprocess.prepare_image(..., background='model') to run a matting model"
    )
    if image.mode == "RGBA":
        return base + " (this RGBA image is fully opaque)"
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return base + f" (mode {image.mode!r} transparency is not used as a matte by the official code: " \
                      "convert the image to RGBA first, e.g. image.convert('RGBA'), to use it)"
    return base
