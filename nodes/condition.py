"""Encode Image node: IMAGE (+ object MASK) → DINOv3 conditioning ``TRELLIS2_COND`` (spec §2, §3)."""
from __future__ import annotations

import torch
from torch import Tensor

from trellis2_core.errors import InputError
from trellis2_core.pipeline.stages import Conditioning
from trellis2_core.preprocess.background import prepare_image, resolve_background

from .checks import check_widgets, node_title, require_asset
from .images import batch_size, check_image, check_mask, from_pil, mask_at, to_pil
from .runtime import PipelineHandle, StageProgress, comfy_errors
from .types import CATEGORY, COND, IMAGE, MASK, PIPELINE, CondAsset

__all__ = ["Trellis2EncodeImage", "RESOLUTIONS"]

RESOLUTIONS = {"512 and 1024": "1024", "512 only": "512"}  # → a pipeline type needing those token sets


class Trellis2EncodeImage:
    """Crop the object, premultiply it on black and compute the DINOv3 image tokens the samplers attend to."""

    DESCRIPTION = ("Prepares the image exactly as TRELLIS.2 does (crop around the object, premultiply on black) "
                   "and encodes it with DINOv3 at 512 px and, for the 1024/cascade types, at 1024 px.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (COND, IMAGE)
    RETURN_NAMES = ("conditioning", "preprocessed")
    OUTPUT_TOOLTIPS = (
        "DINOv3 tokens of the image(s): connect to the three samplers.",
        "The image as the model sees it: cropped around the object, premultiplied on black.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "From Load TRELLIS.2 Model."}),
                "image": (IMAGE, {"tooltip": "The object image; with a transparent background (4 channels) or "
                                             "together with an object mask."}),
                "resolutions": (list(RESOLUTIONS), {
                    "default": "512 and 1024",
                    "tooltip": "Token sets to compute. '512 only' is enough for the 512 pipeline type and saves "
                               "time; the 1024 and cascade types need both."}),
                "preprocess": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Crop to the object and premultiply on black (official). Off: the image is used as "
                               "it is (already cropped, object on black)."}),
            },
            "optional": {
                "mask": (MASK, {"tooltip": "Object mask, 1 = object (from Remove Background). Needed when the "
                                           "image has no transparency."}),
            },
        }

    def encode(self, pipeline: PipelineHandle, image: Tensor, resolutions: str, preprocess: bool,
               mask: Tensor | None = None) -> tuple[CondAsset, Tensor]:
        check_widgets(type(self), {"resolutions": resolutions, "preprocess": preprocess})
        require_asset(pipeline, PipelineHandle, type(self), "pipeline", "Load TRELLIS.2 Model")
        title = node_title(type(self))
        image = check_image(image, "image", title)
        mask = check_mask(mask, image, "mask", title)
        ptype = RESOLUTIONS[resolutions]
        n = batch_size(image)
        progress = StageProgress(2 * n)
        prepared = []
        for i in range(n):
            pil = to_pil(image, i)
            item_mask = mask_at(mask, i)
            background = "none" if not preprocess else "mask" if item_mask is not None else "auto"
            if preprocess and item_mask is None and resolve_background(pil, background) == "model":
                raise InputError(
                    f"{title}: image {i} has no transparency and no mask is connected: put a Remove Background node "
                    "before Encode Image and connect both its IMAGE and MASK outputs")
            try:
                prepared.append(prepare_image(pil, background=background,
                                              mask=None if item_mask is None else item_mask.numpy()))
            except InputError as err:
                raise InputError(f"{title}: image {i}: {err}") from err
            progress.advance()
        conds = []
        with comfy_errors():
            encoder = pipeline.conditioner()
            for pil in prepared:
                conds.append(encoder.condition(pil, ptype))
                progress.advance()
        cond = Conditioning(
            torch.cat([c.cond_512 for c in conds], 0),
            None if conds[0].cond_1024 is None else torch.cat([c.cond_1024 for c in conds], 0),
        )
        preview = from_pil([prepared[0]]) if n == 1 or len({p.size for p in prepared}) > 1 else from_pil(prepared)
        return CondAsset(cond=cond, image=prepared[0]), preview
