"""A tiny stand-in matting model in the BiRefNet folder format, for tests without network access.

``make_tiny_matting(folder)`` writes ``config.json`` (``auto_map`` → our own remote-code classes), the two Python
files and ``model.safetensors``. Its "matte" is a centred disc plus a small random convolution of the image, so the
foreground is never empty; it exercises the real loading path (``load_matting_model``: remote code, strict
safetensors) and the node's model mode, not matting quality.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["make_tiny_matting", "MATTING_NAME"]

MATTING_NAME = "ZhengPeng7/BiRefNet"  # what the workflows name; the folder goes to models/rembg/BiRefNet

_CONFIG_PY = '''
from transformers import PretrainedConfig


class TinyMattingConfig(PretrainedConfig):
    model_type = "tiny_matting"

    def __init__(self, radius=0.32, **kwargs):
        self.radius = radius
        super().__init__(**kwargs)
'''

_MODEL_PY = '''
import torch
from torch import nn


class TinyMatting(nn.Module):
    """logits = 12 * (radius - distance from the centre) + conv(image): a disc-shaped foreground."""

    def __init__(self, config):
        super().__init__()
        self.radius = float(config.radius)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        _, _, h, w = x.shape
        ys = torch.linspace(-0.5, 0.5, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-0.5, 0.5, w, device=x.device, dtype=x.dtype)
        dist = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        logits = 12.0 * (self.radius - dist)[None, None] + 0.1 * self.conv(x)
        return [logits]
'''


def make_tiny_matting(folder: str | Path) -> Path:
    """Write the tiny matting model into ``folder`` (created) and return it."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tiny_matting.py").write_text(_CONFIG_PY)
    (folder / "modeling_tiny_matting.py").write_text(_MODEL_PY)
    config = {
        "model_type": "tiny_matting", "radius": 0.32,
        "auto_map": {"AutoConfig": "configuration_tiny_matting.TinyMattingConfig",
                     "AutoModelForImageSegmentation": "modeling_tiny_matting.TinyMatting"},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    gen = torch.Generator().manual_seed(0)
    save_file({"conv.weight": torch.randn(1, 3, 3, 3, generator=gen) * 0.1, "conv.bias": torch.zeros(1)},
              str(folder / "model.safetensors"))
    return folder
