"""A tiny BiRefNet-interface matting model that tests build themselves (no network, no real weights).

The folder has the Hugging Face remote-code layout that ``trellis2_core.preprocess.background`` loads for
``ZhengPeng7/BiRefNet`` / ``briaai/RMBG-2.0``: ``config.json`` with an ``auto_map`` entry, the model's ``.py`` file
and ``model.safetensors``. The model calls a pixel foreground when its colour is far from a stored background
colour, and returns two side outputs of which only the last one holds the real logits (as BiRefNet).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_CODE = '''"""Tiny matting model for tests (BiRefNet call interface)."""
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class TinyMattingConfig(PretrainedConfig):
    model_type = "tiny_matting"

    def __init__(self, note: str = "test", **kwargs):
        self.note = note
        super().__init__(**kwargs)


class TinyMatting(PreTrainedModel):
    config_class = TinyMattingConfig

    def __init__(self, config):
        super().__init__(config)
        self.background = nn.Parameter(torch.zeros(1, 3, 1, 1))  # normalised background colour
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("steps", torch.arange(4.0))  # a buffer the checkpoint does not store
        self.post_init()

    def forward(self, x):
        distance = (x - self.background).abs().sum(dim=1, keepdim=True)  # [B, 1, H, W]
        coarse = torch.zeros_like(distance)  # a side output that must be ignored (sigmoid 0.5)
        return [coarse, self.scale * distance - self.bias]
'''


def background_logit_params(rgb: tuple[int, int, int], scale: float = 20.0, bias: float = 2.0) -> dict:
    """Weights of the tiny model for a background colour ``rgb`` (0..255)."""
    bg = [(c / 255.0 - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)]
    return {
        "background": torch.tensor(bg, dtype=torch.float32).reshape(1, 3, 1, 1),
        "scale": torch.tensor([scale], dtype=torch.float32),
        "bias": torch.tensor([bias], dtype=torch.float32),
    }


def build_tiny_matting(folder: Path, rgb: tuple[int, int, int] = (255, 255, 255), *, code: str = MODEL_CODE,
                       weights: dict | None = None, config: dict | None = None) -> Path:
    """Write the tiny model folder (config.json, tiny_matting.py, model.safetensors) and return it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_matting.py").write_text(code)
    meta = {
        "architectures": ["TinyMatting"],
        "model_type": "tiny_matting",
        "note": "test",
        "auto_map": {"AutoConfig": "tiny_matting.TinyMattingConfig",
                     "AutoModelForImageSegmentation": "tiny_matting.TinyMatting"},
    }
    meta.update(config or {})
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    save_file(weights if weights is not None else background_logit_params(rgb), str(folder / "model.safetensors"))
    return folder
