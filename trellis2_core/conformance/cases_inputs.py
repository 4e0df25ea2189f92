"""Conformance handlers for the input stages (golden kinds ``dinov3`` and ``preprocess``; spec §2, §3)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import InputError
from ..models.dinov3 import IMAGENET_MEAN, IMAGENET_STD, DinoV3FeatureExtractor
from ..preprocess import preprocess_image
from .case import Case

__all__ = ["run_dinov3", "run_preprocess"]


def _param(case: Case, name: str):
    try:
        return case.params[name]
    except KeyError:
        raise InputError(f"case {case.name}: missing param {name!r}") from None


def _open_image(case: Case, name: str) -> Image.Image:
    path = case.directory / name
    if not path.is_file():
        raise InputError(f"case {case.name}: image {path} not found")
    with Image.open(path) as img:
        img.load()
        return img.copy()


def run_dinov3(case: Case) -> dict[str, Tensor]:
    """DINOv3 features of ``params.image`` at each of ``params.image_sizes`` → ``output.cond_<S>`` (§3)."""
    folder = case.directory / _param(case, "model_dir")
    extractor = DinoV3FeatureExtractor.from_folder(
        folder, mean=case.params.get("mean", IMAGENET_MEAN), std=case.params.get("std", IMAGENET_STD))
    image = _open_image(case, _param(case, "image"))
    return {f"output.cond_{int(s)}": extractor.features(image, int(s)) for s in _param(case, "image_sizes")}


def run_preprocess(case: Case) -> dict[str, Tensor]:
    """Official ``preprocess_image`` of ``params.input_png`` → ``output.rgb`` ``[H, W, 3]`` uint8 (§2)."""
    image = _open_image(case, _param(case, "input_png"))
    mode = case.params.get("input_mode")
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    size = case.inputs.get("input.size_wh")
    if size is not None and tuple(int(v) for v in size.tolist()) != image.size:
        raise InputError(f"case {case.name}: input image is {image.size}, case says {tuple(size.tolist())}")
    out = preprocess_image(image)
    return {"output.rgb": torch.from_numpy(np.array(out, dtype=np.uint8))}
