"""Real ComfyUI frontend: the shipped workflows open as laid out (no node grown past its stored size, none covering
another) and each template's thumbnail is served where the template browser looks for it.

Same set-up as ``test_real_comfyui.py`` (``$COMFYUI_DIR``; headless Chromium for the frontend checks). This is the
ground truth for the size rules that ``tests/workflows/layout_rules.py`` applies without a browser.
"""
from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.comfyui.test_real_comfyui import comfy, page  # noqa: F401  (fixtures)
from tests.workflows.layout_rules import GAP
from tests.workflows.test_workflow_files import FILES

pytestmark = pytest.mark.comfyui


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_thumbnail_is_served(comfy, path):  # noqa: F811
    url = f"/api/workflow_templates/{comfy.pack_name}/{path.stem}.jpg"
    status, ctype, body = comfy.get(url, raw=True)
    assert status == 200 and ctype.startswith("image/jpeg") and body[:3] == b"\xff\xd8\xff", (url, ctype)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_opens_without_overlaps(page, path):  # noqa: F811
    if page is None:
        pytest.skip("Chromium is not installed")
    ui = json.loads(path.read_text())
    page.evaluate("window.comfyAPI.app.app.loadGraphData(%s)" % json.dumps(ui))
    time.sleep(2)
    nodes = page.evaluate("(() => window.comfyAPI.app.app.graph._nodes.map(n => ({id: n.id, type: n.type, "
                          "size: [...n.size], min: [...n.computeSize()], box: [...n.getBounding()]})))()")
    stored = {str(n["id"]): n for n in ui["nodes"]}  # the frontend keeps node ids as strings
    assert {str(n["id"]) for n in nodes} == set(stored)
    for n in nodes:
        want = stored[str(n["id"])]["size"]
        assert n["min"][0] <= want[0] + 0.5 and n["min"][1] <= want[1] + 0.5, \
            f"{path.stem}: {n['type']} #{n['id']} needs {n['min']}, stored {want}"
        assert abs(n["size"][0] - want[0]) < 1 and abs(n["size"][1] - want[1]) < 1, \
            f"{path.stem}: the frontend resized {n['type']} #{n['id']} from {want} to {n['size']}"
    for a, b in itertools.combinations(nodes, 2):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
        gap = max(bx - (ax + aw), ax - (bx + bw), by - (ay + ah), ay - (by + bh))
        assert gap >= GAP - 1, f"{path.stem}: {a['type']} #{a['id']} and {b['type']} #{b['id']} {gap:.0f} apart"
