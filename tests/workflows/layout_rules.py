"""How much canvas a node of a UI-format workflow needs, and where its box is: the geometry the layout test checks.

Units are LiteGraph canvas units (1 unit = 1 pixel at zoom 1). A node's ``pos`` is the top-left corner of its body;
its title bar (30 units) sits above ``pos``, and ComfyUI draws a custom node's source badge just above the title.
The body height the ComfyUI frontend (1.27–1.49) computes for a node is
``20 × max(socket inputs, outputs) + 6``, plus ``8 + 24`` per widget row when the node has widgets (a multiline
text box needs 54), plus the node's preview area (the Load Image picture, a 3D viewer). These constants were
checked against ``node.computeSize()`` in the real frontend for every node type of the shipped workflows
(``tests/comfyui`` repeats that check whenever a real ComfyUI is available).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tests.workflows.graph import FRONTEND_ONLY, widget_slots

__all__ = ["TITLE_H", "GAP", "Box", "node_box", "group_box", "group_title_h", "min_size", "note_min_height",
           "PREVIEW_H", "FIXED_MIN", "text_width"]

ROOT = Path(__file__).resolve().parents[2]
TITLE_H = 30  # LiteGraph.NODE_TITLE_HEIGHT
SLOT_H = 20  # LiteGraph.NODE_SLOT_HEIGHT
WIDGET_ROW = 24  # widget height 20 + 4 spacing
WIDGETS_PAD = 8
BODY_PAD = 6
MULTILINE_H = 54
MIN_W = 210
CHAR_W = 7.0  # average width of a 14 px UI-font character (lower case, digits, punctuation)
CAP_W = 9.0  # of a capital
GAP = 30  # the least free space between two node boxes (room for the source badge above a title)


def _preview_min_height() -> int:
    """Our 3D preview widget's minimum height, read from the extension that draws it."""
    js = (ROOT / "web" / "trellis2_preview.js").read_text()
    return int(re.search(r"const MIN_HEIGHT = (\d+);", js).group(1))


def _preview_nodes() -> set[str]:
    js = (ROOT / "web" / "trellis2_preview.js").read_text()
    return set(re.findall(r'"(Trellis2\w+)"', re.search(r"NODE_TYPES = new Set\(\[([^\]]*)\]", js).group(1)))


VIEWER_WIDGETS = {("SaveGLB", "image"), ("Preview3D", "image")}  # core's 3D viewer: counted in PREVIEW_H / FIXED_MIN
FIXED_MIN = {"Preview3D": (400, 550)}  # core's Preview 3D asks for at least this (its viewer)
# the body area each node type draws below its widgets (a DOM widget adds 4 units of spacing)
PREVIEW_H: dict[str, int] = {
    "LoadImage": 224,  # the loaded picture (frontend minimum 220 + 4)
    "PreviewImage": 224,  # the images after a run: give them the same room as Load Image's picture
    "SaveGLB": 300,  # core's 3D viewer
    **{t: _preview_min_height() + 4 for t in _preview_nodes()},
}


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def gap_to(self, other: "Box") -> float:
        """The free space between two boxes (negative when they overlap)."""
        dx = max(other.x0 - self.x1, self.x0 - other.x1)
        dy = max(other.y0 - self.y1, self.y0 - other.y1)
        return max(dx, dy)

    def contains(self, other: "Box", margin: float = 0.0) -> bool:
        return (self.x0 + margin <= other.x0 and self.y0 + margin <= other.y0 and other.x1 <= self.x1 - margin
                and other.y1 <= self.y1 - margin)

    def union(self, other: "Box") -> "Box":
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0


def node_box(node: Mapping[str, Any]) -> Box:
    """The node on the canvas: body and title bar."""
    (x, y), (w, h) = node["pos"], node["size"]
    return Box(x, y - TITLE_H, x + w, y + h)


def group_title_h(group: Mapping[str, Any]) -> float:
    return group.get("font_size", 24) * 1.4


def group_box(group: Mapping[str, Any]) -> Box:
    x, y, w, h = group["bounding"]
    return Box(x, y, x + w, y + h)


def text_width(text: str) -> float:
    """Width of ``text`` in the frontend's UI font: capitals are wider (fitted to titles measured in Chromium)."""
    return sum(CAP_W if c.isupper() else CHAR_W for c in text)


def _spec_opts(spec: tuple) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def min_size(node: Mapping[str, Any], schema: Mapping[str, Any], outputs: tuple[str, ...]) -> tuple[float, float]:
    """The least (width, height) of the node's body that shows its title, sockets, widgets and preview.

    ``schema`` is the node type's ``INPUT_TYPES()``, ``outputs`` its ``RETURN_TYPES``.
    """
    if node["type"] in FRONTEND_ONLY:
        width = MIN_W
        return width, note_min_height(str((node.get("widgets_values") or [""])[0]), node["size"][0])
    slots = [s for s in widget_slots(schema) if (node["type"], s.name) not in VIEWER_WIDGETS]
    widget_names = {s.name for s in slots}
    sockets = [name for section in ("required", "optional") for name in (schema.get(section) or {})
               if name not in widget_names and (node["type"], name) not in VIEWER_WIDGETS]
    height = SLOT_H * max(len(sockets), len(outputs)) + BODY_PAD
    if slots:
        height += WIDGETS_PAD + sum(MULTILINE_H if _spec_opts(s.spec).get("multiline") else WIDGET_ROW
                                    for s in slots)
    height += PREVIEW_H.get(node["type"], 0)
    title = node.get("title") or node["type"]
    width = max(MIN_W, text_width(title) + 40)
    values = node.get("widgets_values") or []
    for slot, value in zip(slots, values):  # label on the left, value on the right, arrows at both ends
        if not _spec_opts(slot.spec).get("multiline") and not slot.extra:
            width = max(width, text_width(slot.name) + text_width(str(value)) + 60)
    out_labels = [o.get("name") or t for o, t in zip(node.get("outputs") or [{}] * len(outputs), outputs)]
    for k in range(max(len(sockets), len(outputs))):  # an input label and an output label share a row
        left = sockets[k] if k < len(sockets) else ""
        right = out_labels[k] if k < len(out_labels) else ""
        width = max(width, text_width(left) + text_width(right) + 60)
    fixed_w, fixed_h = FIXED_MIN.get(node["type"], (0, 0))
    return max(width, fixed_w), max(height, fixed_h)


NOTE_LINE_H = 18
NOTE_PAD = 40


def note_min_height(text: str, width: float) -> float:
    """Height a note needs to show ``text`` without scrolling at ``width``."""
    per_line = max(1, int((width - 30) / CHAR_W))
    lines = sum(max(1, math.ceil(len(par) / per_line)) for par in text.split("\n"))
    return lines * NOTE_LINE_H + NOTE_PAD
