"""Every shipped workflow has its template thumbnail (``<name>.jpg``, ComfyUI's name for a custom-node template's
picture), drawn from the workflow as it is now."""
from __future__ import annotations

import copy
import io
import json

import pytest
from PIL import Image

from tests.workflows.test_workflow_files import FILES
from workflows import make_thumbnails as thumbs


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_workflow_has_a_jpeg_thumbnail(path):
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"missing {thumb.name}: run python workflows/make_thumbnails.py"
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and img.size == (thumbs.SIZE, thumbs.SIZE) and img.mode == "RGB"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_thumbnail_is_up_to_date(path):
    with Image.open(path.with_suffix(".jpg")) as shipped:
        worst = thumbs.worst_block(thumbs.fresh(path), shipped)
    assert worst <= thumbs.BLOCK_TOLERANCE, \
        f"{path.stem}.jpg is stale (a tile differs by {worst:.1f}): run python workflows/make_thumbnails.py"


def test_drawing_is_deterministic_and_follows_the_layout():
    path = FILES[0]
    ui = json.loads(path.read_text())
    once, twice = thumbs.encode(thumbs.render(ui, path.stem)), thumbs.encode(thumbs.render(ui, path.stem))
    assert once == twice
    moved = copy.deepcopy(ui)  # one node moved by a node's width: the shipped thumbnail no longer matches
    node = max(moved["nodes"], key=lambda n: n["size"][0] * n["size"][1])
    node["pos"][0] += node["size"][0] / 2
    redrawn = Image.open(io.BytesIO(thumbs.encode(thumbs.render(moved, path.stem))))
    with Image.open(path.with_suffix(".jpg")) as shipped:
        assert thumbs.worst_block(redrawn, shipped) > thumbs.BLOCK_TOLERANCE
    retitled = copy.deepcopy(ui)  # a changed title shows too
    retitled["nodes"][0]["title"] = "Something else entirely"
    redrawn = Image.open(io.BytesIO(thumbs.encode(thumbs.render(retitled, path.stem))))
    with Image.open(path.with_suffix(".jpg")) as shipped:
        assert thumbs.worst_block(redrawn, shipped) > thumbs.BLOCK_TOLERANCE


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_template_has_a_heading(path):
    assert path.stem in thumbs.NAMES, f"add a heading for {path.stem} to NAMES in workflows/make_thumbnails.py"
