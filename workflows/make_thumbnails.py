"""Draw each workflow's template thumbnail: ``<name>.jpg`` next to ``<name>.json`` (what ComfyUI's template browser
shows for a custom-node template: ``/api/workflow_templates/<pack>/<name>.jpg``).

The picture is made from the workflow file alone (groups, node boxes with their titles, links coloured by type,
the template's name on top), with Pillow's built-in font, so running it again on an unchanged workflow gives the
same pixels. Run after changing a workflow:

    python workflows/make_thumbnails.py            # rewrite every thumbnail
    python workflows/make_thumbnails.py --check    # exit 1 if one is missing or stale
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, ImageChops, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
SIZE = 512  # square: the template browser crops its cards to squares
SUPERSAMPLE = 2  # drawn at twice the size, then downscaled (smooth edges, same pixels every run)
HEADER = 74  # pixels above the diagram for the name
MARGIN = 16
JPEG_QUALITY = 95
TITLE_H = 30  # LiteGraph node title bar, canvas units
SLOT_H = 20
WIDGET_ROW = 24
NAMES = {  # template name → the heading on its thumbnail (Pillow's built-in font has no arrows or dashes)
    "trellis2_simple": ("TRELLIS.2 · Image to 3D", "one node, official settings"),
    "trellis2_staged": ("TRELLIS.2 · Staged", "every stage as a node"),
    "trellis2_low_vram": ("TRELLIS.2 · Low VRAM", "staged, for 6-12 GB GPUs"),
    "trellis2_sdxl_text_to_3d": ("TRELLIS.2 · Text to 3D", "SDXL picture to textured GLB"),
    "trellis2_texture_mesh": ("TRELLIS.2 · Texture your mesh", "PBR textures baked onto your own mesh"),
    "trellis2_mixed_core": ("TRELLIS.2 · With core 3D nodes", "core Fill Holes, Save GLB and this pack"),
}
BACKGROUND = (30, 30, 30)
NODE_BODY = (53, 53, 53)
NODE_TITLE = {"ours": (40, 80, 120), "core": (70, 70, 70)}
LINK_COLOURS = {"IMAGE": "#64B5F6", "MASK": "#81C784", "LATENT": "#FF9CF9", "CONDITIONING": "#FFA931",
                "CLIP": "#FFD500", "MODEL": "#B39DDB", "VAE": "#FF6E6E"}
TEXT = (235, 235, 235)
DIM_TEXT = (170, 170, 170)


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def link_colour(kind: str) -> tuple[int, int, int]:
    if kind in LINK_COLOURS:
        return _rgb(LINK_COLOURS[kind])
    digest = hashlib.sha256(kind.encode()).digest()  # a fixed colour per custom type, never too dark
    return tuple(110 + digest[i] % 130 for i in range(3))


def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(1, round(size)))


def _bounds(ui: Mapping[str, Any]) -> tuple[float, float, float, float]:
    xs0, ys0, xs1, ys1 = [], [], [], []
    for n in ui["nodes"]:
        (x, y), (w, h) = n["pos"], n["size"]
        xs0.append(x), ys0.append(y - TITLE_H), xs1.append(x + w), ys1.append(y + h)
    for g in ui.get("groups") or []:
        x, y, w, h = g["bounding"]
        xs0.append(x), ys0.append(y), xs1.append(x + w), ys1.append(y + h)
    return min(xs0), min(ys0), max(xs1), max(ys1)


_PLAIN = str.maketrans({"–": "-", "—": "-", "→": ">", "²": "2", "≤": "<="})  # glyphs the built-in font lacks


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    text = text.translate(_PLAIN)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _socket_rows(node: Mapping[str, Any]) -> dict[int, int]:
    """Input slot index → the socket row it is drawn on (widget inputs have no row of their own)."""
    rows, k = {}, 0
    for i, entry in enumerate(node.get("inputs") or []):
        if "widget" not in entry:
            rows[i] = k
            k += 1
    return rows


def render(ui: Mapping[str, Any], name: str) -> Image.Image:
    """The thumbnail of the UI-format workflow ``ui`` called ``name`` (RGB, SIZE × SIZE)."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(img, "RGBA")
    heading, sub = NAMES.get(name, (name.replace("_", " "), ""))
    draw.text((MARGIN * s, 14 * s), heading, font=_font(26 * s), fill=TEXT)
    if sub:
        draw.text((MARGIN * s, 46 * s), sub, font=_font(16 * s), fill=DIM_TEXT)
    x0, y0, x1, y1 = _bounds(ui)
    avail_w, avail_h = (SIZE - 2 * MARGIN) * s, (SIZE - HEADER - MARGIN) * s
    scale = min(avail_w / (x1 - x0), avail_h / (y1 - y0))
    ox = MARGIN * s + (avail_w - (x1 - x0) * scale) / 2
    oy = HEADER * s + (avail_h - (y1 - y0) * scale) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    for g in ui.get("groups") or []:
        gx, gy, gw, gh = g["bounding"]
        colour = _rgb(g.get("color") or "#3f789e")
        draw.rectangle([*at(gx, gy), *at(gx + gw, gy + gh)], fill=colour + (60,), outline=colour + (200,),
                       width=s)
        title_h = g.get("font_size", 24) * 1.4
        draw.rectangle([*at(gx, gy), *at(gx + gw, gy + title_h)], fill=colour + (150,))
        font = _font(title_h * 0.62 * scale)
        tx, ty = at(gx + 8, gy + title_h * 0.18)
        draw.text((tx, ty), _fit_text(draw, g.get("title", ""), font, (gw - 16) * scale), font=font, fill=TEXT)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        a, b = nodes[src], nodes[dst]
        p0 = at(a["pos"][0] + a["size"][0], a["pos"][1] + SLOT_H * (src_slot + 0.5))
        row = _socket_rows(b).get(dst_slot, 0)
        p3 = at(b["pos"][0], b["pos"][1] + SLOT_H * (row + 0.5))
        bend = max(40 * s, abs(p3[0] - p0[0]) * 0.5)
        p1, p2 = (p0[0] + bend, p0[1]), (p3[0] - bend, p3[1])
        pts = []
        for i in range(41):  # cubic Bézier, like the frontend's spline links
            t = i / 40
            u = 1 - t
            pts.append((u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
                        u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1]))
        draw.line(pts, fill=link_colour(kind) + (230,), width=2 * s, joint="curve")
    for n in ui["nodes"]:
        (x, y), (w, h) = n["pos"], n["size"]
        radius = max(1, round(6 * scale))
        kind = "ours" if str(n["type"]).startswith("Trellis2") else "core"
        body = _rgb(n["bgcolor"]) if n.get("bgcolor") else NODE_BODY
        head = _rgb(n["color"]) if n.get("color") else NODE_TITLE[kind]
        draw.rounded_rectangle([*at(x, y - TITLE_H), *at(x + w, y + h)], radius=radius, fill=body)
        draw.rounded_rectangle([*at(x, y - TITLE_H), *at(x + w, y)], radius=radius, fill=head)
        font = _font(TITLE_H * 0.55 * scale)
        title = n.get("title") or n["type"]
        draw.text(at(x + 10, y - TITLE_H * 0.78), _fit_text(draw, title, font, (w - 20) * scale), font=font,
                  fill=TEXT)
        sockets = len(_socket_rows(n))
        top = y + SLOT_H * max(sockets, len(n.get("outputs") or [])) + 8
        rows = len(n.get("widgets_values") or []) if isinstance(n.get("widgets_values"), list) else 0
        if n["type"] in ("Note", "MarkdownNote"):  # text lines
            text = str((n.get("widgets_values") or [""])[0])
            rows, top = min(len(text) // 40 + text.count("\n") + 1, int((h - 16) / 18)), y + 10
        for k in range(rows):  # widget rows as bars, as far as the node's height allows
            r0 = top + k * WIDGET_ROW
            if r0 + WIDGET_ROW - 6 > y + h:
                break
            draw.rounded_rectangle([*at(x + 10, r0), *at(x + w - 10, r0 + WIDGET_ROW - 8)],
                                   radius=max(1, round(4 * scale)), fill=(255, 255, 255, 22))
        for k in range(len(n.get("outputs") or [])):  # socket dots make the flow direction visible
            cx, cy = at(x + w, y + SLOT_H * (k + 0.5))
            kind_out = n["outputs"][k].get("type", "")
            draw.ellipse([cx - 3 * s, cy - 3 * s, cx + 3 * s, cy + 3 * s], fill=link_colour(kind_out))
    return img.resize((SIZE, SIZE), Image.LANCZOS)


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False, subsampling=0)
    return buf.getvalue()


def thumbnail_path(workflow: Path) -> Path:
    return workflow.with_suffix(".jpg")


BLOCK = 8  # pixels (a JPEG block)
BLOCK_TOLERANCE = 10.0  # mean |difference| per tile: the JPEG round trip gives ≤ 5, a changed node title ≥ 19


def worst_block(a: Image.Image, b: Image.Image) -> float:
    """The largest mean absolute difference (0–255, per channel) of any BLOCK × BLOCK tile of two images."""
    if a.size != b.size:
        return 255.0
    tiles = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).reduce(BLOCK)  # a pixel: a tile's mean
    return float(max(high for _, high in tiles.getextrema()))


def fresh(workflow: Path) -> Image.Image:
    """What the thumbnail of ``workflow`` looks like when drawn now (after the JPEG round trip)."""
    return Image.open(io.BytesIO(encode(render(json.loads(workflow.read_text()), workflow.stem)))).convert("RGB")


def stale(workflow: Path) -> bool:
    """True when the thumbnail is missing or differs from what the workflow draws now."""
    path = thumbnail_path(workflow)
    if not path.is_file():
        return True
    return worst_block(fresh(workflow), Image.open(path)) > BLOCK_TOLERANCE


def main(argv: list[str]) -> int:
    workflows = sorted(HERE.glob("*.json"))
    if argv[1:] == ["--check"]:
        bad = [w.name for w in workflows if stale(w)]
        for name in bad:
            print(f"stale or missing thumbnail: {name} (run python workflows/make_thumbnails.py)")
        return 1 if bad else 0
    if argv[1:]:
        print(__doc__)
        return 2
    for w in workflows:
        thumbnail_path(w).write_bytes(encode(render(json.loads(w.read_text()), w.stem)))
        print(f"wrote {thumbnail_path(w).relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
