"""Fixtures of the node tests: the tiny golden pipeline loaded through the Load node, output/models folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "images"


@pytest.fixture(scope="session")
def tiny_pipeline(golden_dir: Path) -> Path:
    path = golden_dir / "tiny-pipeline"
    if not (path / "pipeline.json").is_file():
        pytest.skip(f"tiny pipeline not found at {path}")
    return path


@pytest.fixture(scope="session")
def handle(tiny_pipeline: Path):
    """A ``TRELLIS2_PIPELINE`` of the tiny pipeline on the CPU (vram preset high: models stay loaded)."""
    from nodes.load import Trellis2LoadModel

    (h,) = Trellis2LoadModel().load("microsoft/TRELLIS.2-4B", "float32", "auto", "high", "cpu",
                                    custom_source=str(tiny_pipeline))
    return h


@pytest.fixture(scope="session")
def rgba_asset() -> Image.Image:
    path = ASSETS / "T.png"
    if not path.is_file():
        pytest.skip(f"asset image not found at {path}")
    return Image.open(path).convert("RGBA").resize((256, 256), Image.LANCZOS)


def comfy_load_image(rgba: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """What ComfyUI's LoadImage outputs for an RGBA file: IMAGE [1,H,W,3] and MASK = 1 − alpha [1,H,W]."""
    arr = torch.from_numpy(np.asarray(rgba, dtype=np.float32) / 255.0)[None]
    return arr[..., :3].contiguous(), 1.0 - arr[..., 3]


@pytest.fixture()
def output_dir(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setenv("TRELLIS2_OUTPUT_DIR", str(out))
    return out
