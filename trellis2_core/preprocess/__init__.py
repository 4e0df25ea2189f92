"""Input image preparation (spec §2): alpha/mask handling, downscale, foreground crop, premultiply."""
from __future__ import annotations

from .background import (
    BACKGROUND_MODES, DEFAULT_MATTING_MODEL, BiRefNetMatting, load_matting_model, prepare_image, remove_background,
)
from .image import (
    ALPHA_THRESHOLD, DEFAULT_MAX_SIZE, attach_mask, crop_to_foreground, downscale, has_usable_alpha, premultiply,
    preprocess_image,
)

__all__ = [
    "preprocess_image", "has_usable_alpha", "downscale", "attach_mask", "crop_to_foreground", "premultiply",
    "DEFAULT_MAX_SIZE", "ALPHA_THRESHOLD", "prepare_image", "remove_background", "load_matting_model",
    "BiRefNetMatting", "BACKGROUND_MODES", "DEFAULT_MATTING_MODEL",
]
