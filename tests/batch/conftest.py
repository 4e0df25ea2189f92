"""Fixtures of the batch tests: a folder of 5 inputs (one broken) and one local batch over it with the demo pipeline.

The batch runs once per session (4 images through the whole demo pipeline, small settings, 1 CPU thread so that
Ray's 1-CPU workers compute the same bytes); the tests read its outputs.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: small settings: every stage runs, in a few seconds per image on a CPU
FAST = dict(pipeline="demo", pipeline_type="512", steps=2, export={"texture_size": 256, "target_faces": 5000},
            threads=1)
CLI_FAST = ["--pipeline", "demo", "--type", "512", "--steps", "2", "--texture-size", "256", "--faces", "5000",
            "--threads", "1"]
GOOD = ("a.png", "b.png", "c d.png", "c_d.webp")
OUTPUTS = {"a.png": "a.glb", "b.png": "b.glb", "c d.png": "c_d_png.glb", "c_d.webp": "c_d_webp.glb"}


def write_inputs(folder: Path) -> Path:
    """4 variants of assets/T.png (RGBA: no matting model needed), a broken .png and a non-image file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(REPO / "assets" / "T.png") as src:
        img = src.convert("RGBA").resize((256, 256), Image.LANCZOS)
    img.save(folder / "a.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "b.png")
    img.rotate(25).save(folder / "c d.png")
    img.resize((192, 192), Image.LANCZOS).save(folder / "c_d.webp", lossless=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    (folder / "notes.txt").write_text("not an input")
    return folder


class Recorder:
    """A batch progress that records every call."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, str]] = []
        self.stages: list[str] = []

    def batch(self, done: int, total: int, current: str) -> None:
        self.batches.append((done, total, current))

    def step(self, stage: str, i: int, n: int) -> None:
        self.stages.append(stage)


@pytest.fixture(scope="session")
def batch_inputs(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("batch") / "in")


@pytest.fixture(scope="session")
def local_batch(batch_inputs, tmp_path_factory):
    """``(result, output folder, progress recorder)`` of one local batch over :func:`batch_inputs`."""
    from trellis2_core.batch import run_batch

    out = tmp_path_factory.mktemp("batch") / "out"
    progress = Recorder()
    result = run_batch(batch_inputs, out, progress=progress, **FAST)
    return result, out, progress
