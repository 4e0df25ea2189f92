"""Remove Background node: IMAGE (+ MASK) → IMAGE + MASK (1 = object), as the official preprocessing (spec §2).

Images are first downscaled so that the longest side is at most ``max_size`` (official: 1024, §2 step 2), then
the matte comes from the image's alpha, from a mask, or from a BiRefNet-style matting model (§2 step 3).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from trellis2_core.cancel import cancel_on_forward
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.preprocess.background import DEFAULT_MATTING_MODEL, load_matting_model, remove_background
from trellis2_core.preprocess.image import MIN_FOREGROUND_SIDE, attach_mask, downscale, has_usable_alpha

from . import comfy_bridge as bridge
from .checks import check_widgets, node_title, require_asset, widget_label
from .images import batch_size, check_image, check_mask, from_pil, mask_at, masks_from, to_pil
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .types import CATEGORY, IMAGE, MASK, PIPELINE

__all__ = ["Trellis2RemoveBackground", "METHODS"]

METHODS = ("auto", "keep alpha", "use mask", "model")


def _transparency(mask: Tensor | None, size: tuple[int, int], invert: bool) -> np.ndarray | None:
    """LoadImage's MASK (1 = transparent) as an alpha array ``[H, W]`` float (1 = opaque), or None if it has no
    transparency or does not match the image (LoadImage gives a 64×64 zero mask for images without alpha)."""
    if mask is None:
        return None
    arr = mask.numpy()
    if arr.shape != (size[1], size[0]):
        return None
    alpha = arr if invert else 1.0 - arr
    return alpha if float(alpha.min()) < 1.0 else None


def _drop_placeholder(mask: Tensor | None, image: Tensor, title: str) -> Tensor | None:
    """LoadImage's MASK of a picture without alpha is a 64×64 zero tensor: a mask of another size than the image
    is dropped when it holds no transparency at all, and refused otherwise (it belongs to another picture)."""
    if mask is None or tuple(mask.shape[-2:]) == tuple(image.shape[1:3]):
        return mask
    if float(mask.abs().max()) == 0.0:
        return None
    h, w = (int(v) for v in image.shape[1:3])
    raise InputError(f"{title}: input 'mask': the MASK is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
                     f"{w}x{h} (W x H); connect the MASK that Load Image gives together with this IMAGE")


class Trellis2RemoveBackground:
    """Cut the object out: keep the image's transparency, use a mask, or run a matting model."""

    DESCRIPTION = ("Separates the object from the background, as TRELLIS.2's preprocessing does. Connect "
                   "LoadImage's IMAGE and MASK: its MASK carries the PNG's transparency.")
    CATEGORY = CATEGORY
    FUNCTION = "remove"
    RETURN_TYPES = (IMAGE, MASK)
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = (
        "The image, downscaled to at most max_size px, RGB (background pixels kept; the mask says what is object).",
        "Object mask, 1 = object, 0 = background, same size as the image output.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": (IMAGE, {"tooltip": "The picture of one object (a batch is processed image by image)."}),
                "method": (list(METHODS), {
                    "default": "auto",
                    "tooltip": "keep alpha: the PNG's transparency (a 4-channel IMAGE, or LoadImage's MASK). use "
                               "mask: the mask input, 1 = object. model: a matting model predicts the object. auto: "
                               "transparency when there is some, otherwise the model."}),
                "max_size": ("INT", {
                    "default": 1024, "min": 0, "max": 8192, "step": 8,
                    "tooltip": "Longest side in pixels after downscaling (official 1024; never upscales). "
                               "0 disables downscaling."}),
                "invert_mask": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Invert the mask input first. Leave off for LoadImage's MASK with 'keep alpha'/'auto' "
                               "and for object masks (1 = object) with 'use mask'."}),
                "matting_model": ("STRING", {
                    "default": DEFAULT_MATTING_MODEL,
                    "tooltip": "Matting model for 'model': a folder under models/rembg/, a path, or a Hugging Face "
                               "id (BiRefNet interface; briaai/RMBG-2.0 is the official, gated choice)."}),
            },
            "optional": {
                "mask": (MASK, {"tooltip": "'keep alpha'/'auto': LoadImage's MASK (1 = transparent). 'use mask': "
                                           "an object mask (1 = object)."}),
                "pipeline": (PIPELINE, {"tooltip": "Optional: keeps the matting model loaded with the pipeline "
                                                   "(unless its VRAM preset is low) and runs it on its device."}),
            },
        }

    def remove(self, image: Tensor, method: str, max_size: int, invert_mask: bool, matting_model: str,
               mask: Tensor | None = None, pipeline: PipelineHandle | None = None) -> tuple[Tensor, Tensor]:
        check_widgets(type(self), {"method": method, "max_size": max_size, "invert_mask": invert_mask,
                                   "matting_model": matting_model})
        if pipeline is not None:
            require_asset(pipeline, PipelineHandle, type(self), "pipeline", "Load TRELLIS.2 Model")
        title = node_title(type(self))
        if 0 < max_size < MIN_FOREGROUND_SIDE:
            raise InputError(f"{widget_label(type(self), 'max_size')} must be 0 (no downscaling) or at least "
                             f"{MIN_FOREGROUND_SIDE} px, got {max_size}")
        image = check_image(image, "image", title)
        mask = check_mask(mask, image, "mask", title, same_size=method == "use mask")
        mask = _drop_placeholder(mask, image, title)
        n = batch_size(image)
        progress = StageProgress(n)
        matting: Any = None
        out: list[Image.Image] = []
        with comfy_errors():
            for i in range(n):
                if progress.cancelled():
                    raise CancelledError("background removal cancelled")
                pil = to_pil(image, i)
                item_mask = mask_at(mask, i)
                mode = self._mode(method, pil, item_mask, invert_mask)
                if mode == "model" and matting is None:
                    matting = self._matting(matting_model, pipeline)
                try:
                    with cancel_on_forward(matting, where="background removal"):  # Cancel between matting blocks
                        out.append(self._cut(pil, mode, item_mask, invert_mask, max_size, matting))
                except InputError as err:
                    raise InputError(f"{title}: image {i}: {err}") from err
                progress.advance()
        sizes = {im.size for im in out}
        if len(sizes) > 1:
            raise InputError(f"the batch images have different sizes {sorted(sizes)}; process them one by one")
        return from_pil(out), masks_from(out)

    @staticmethod
    def _mode(method: str, pil: Image.Image, mask: Tensor | None, invert: bool) -> str:
        if method == "use mask":
            if mask is None:
                raise InputError("method 'use mask' needs the mask input (1 = object); connect a MASK")
            return "mask"
        has_alpha = has_usable_alpha(pil) or _transparency(mask, pil.size, invert) is not None
        if method == "keep alpha":
            if not has_alpha:
                raise InputError(
                    "method 'keep alpha': the image has no transparency (its IMAGE has 3 channels and the MASK input "
                    "is missing, all opaque or of another size). Use 'model' for photos, or 'use mask'")
            return "alpha"
        if method == "auto":
            return "alpha" if has_alpha else "model"
        return "model"

    @staticmethod
    def _cut(pil: Image.Image, mode: str, mask: Tensor | None, invert: bool, max_size: int,
             matting: Any) -> Image.Image:
        """RGBA image at most ``max_size`` px, alpha = object (official order: downscale, then matting)."""
        limit = max_size if max_size > 0 else max(pil.size)
        if mode == "model":
            return remove_background(downscale(pil.convert("RGB"), limit), matting)
        if mode == "mask":
            m = mask.numpy()
            rgba = attach_mask(pil.convert("RGB"), 1.0 - m if invert else m)
        elif has_usable_alpha(pil):
            rgba = pil
        else:
            rgba = attach_mask(pil.convert("RGB"), _transparency(mask, pil.size, invert))
        return downscale(rgba, limit)

    @staticmethod
    def _matting(name: str, pipeline: PipelineHandle | None) -> Any:
        source = name.strip() or DEFAULT_MATTING_MODEL
        models = bridge.models_dir()
        if pipeline is None:
            return load_matting_model(source, device=bridge.torch_device(), models_dir=models)
        return pipeline.extra_model(f"matting:{source}", lambda: load_matting_model(
            source, device=pipeline.device, models_dir=models))

