"""The shipped workflows are readable: no node covers another, every node is tall and wide enough for its widgets,
groups hold whole nodes, notes say what to set, and the whole graph is legible when fitted to a screen."""
from __future__ import annotations

import copy
import itertools
import json

import pytest

from tests.workflows.graph import FRONTEND_ONLY
from tests.workflows.layout_rules import GAP, group_box, group_title_h, min_size, node_box
from tests.workflows.make_workflows import layout
from tests.workflows.test_workflow_files import FILES, outputs_of, schemas

CANVAS = (1600, 1000)  # ComfyUI's canvas in a 1600×1000 browser window, pixels
FREE = (60, 90, 1600, 1000)  # the part of it ComfyUI's side bar, tab bar and Run bar leave uncovered
FIT_FILL = 0.75  # "Fit view" fills this share of the canvas (LiteGraph DragAndScale.fitToBounds' default zoom)
MIN_ZOOM = 8 / 14  # the frontend stops drawing node text when its 14 px labels fall under 8 px (MinFontSizeForLOD)
MAX_EXTENT = 3000  # canvas units, either direction
MAX_ASPECT = 2.5


def _load(path) -> dict:
    return json.loads(path.read_text())


def _label(node: dict) -> str:
    return f"{node['type']} #{node['id']} ({node.get('title', '')!s})"


def graph_box(ui: dict):
    boxes = [node_box(n) for n in ui["nodes"]] + [group_box(g) for g in ui.get("groups") or []]
    out = boxes[0]
    for b in boxes[1:]:
        out = out.union(b)
    return out


def _needs(node: dict, known: dict) -> tuple[float, float]:
    if node["type"] in FRONTEND_ONLY:
        return min_size(node, {}, ())
    return min_size(node, known[node["type"]], outputs_of(node["type"]))


def drawn_box(node: dict, known: dict):
    """The box the frontend draws: it grows a node whose stored size is smaller than its content."""
    (w, h), (need_w, need_h) = node["size"], _needs(node, known)
    return node_box({"pos": node["pos"], "size": [max(w, need_w), max(h, need_h)]})


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_node_covers_another(path):
    ui = _load(path)
    known = schemas()
    problems = []
    for a, b in itertools.combinations(ui["nodes"], 2):
        gap = drawn_box(a, known).gap_to(drawn_box(b, known))
        if gap < GAP:
            problems.append(f"{_label(a)} and {_label(b)}: {gap:.0f} units apart (overlap if negative)")
    assert not problems, f"{path.stem}: nodes need {GAP} units between them:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_nodes_are_big_enough_for_their_widgets(path):
    """A stored size smaller than the content makes the frontend grow the node on load, over its neighbours."""
    ui = _load(path)
    known = schemas()
    problems = []
    for node in ui["nodes"]:
        need_w, need_h = _needs(node, known)
        w, h = node["size"]
        if w < need_w - 0.5 or h < need_h - 0.5:
            problems.append(f"{_label(node)}: size {w:.0f}×{h:.0f}, needs at least {need_w:.0f}×{need_h:.0f}")
    assert not problems, f"{path.stem}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_groups_hold_whole_nodes(path):
    ui = _load(path)
    groups = ui.get("groups") or []
    for g in groups:
        assert g.get("title", "").strip(), f"{path.stem}: a group without a title"
    for a, b in itertools.combinations(groups, 2):
        assert group_box(a).gap_to(group_box(b)) >= GAP, f"{path.stem}: groups {a['title']!r} and {b['title']!r}"
    for node in ui["nodes"]:
        box = node_box(node)
        holders = [g for g in groups if group_box(g).gap_to(box) < GAP]
        assert len(holders) <= 1, f"{path.stem}: {_label(node)} touches groups {[g['title'] for g in holders]}"
        if holders:
            g = holders[0]
            gb = group_box(g)
            assert gb.contains(box, margin=10), f"{path.stem}: {_label(node)} sticks out of group {g['title']!r}"
            assert box.y0 >= gb.y0 + group_title_h(g) + 10, f"{path.stem}: {_label(node)} covers {g['title']!r}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_graph_is_readable_at_fit_to_view(path):
    ui = _load(path)
    box = graph_box(ui)
    assert box.w <= MAX_EXTENT and box.h <= MAX_EXTENT, f"{path.stem}: graph is {box.w:.0f}×{box.h:.0f} units"
    assert box.w <= MAX_ASPECT * box.h and box.h <= MAX_ASPECT * box.w, \
        f"{path.stem}: graph is {box.w:.0f}×{box.h:.0f} units: lay it out in rows/columns"
    fit = FIT_FILL * min(CANVAS[0] / box.w, CANVAS[1] / box.h)
    assert fit >= MIN_ZOOM, f"{path.stem}: {box.w:.0f}×{box.h:.0f} units: Fit view zooms to {fit:.2f}, where " \
                            f"the frontend hides node text (< {MIN_ZOOM:.2f})"
    ds = ui.get("extra", {}).get("ds")  # the view a template opens at shows the whole graph, text drawn
    assert ds, f"{path.stem}: no saved view (extra.ds)"
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert scale >= MIN_ZOOM
    assert FREE[0] <= (box.x0 + ox) * scale and (box.x1 + ox) * scale <= FREE[2], f"{path.stem}: view cuts the graph"
    assert FREE[1] <= (box.y0 + oy) * scale and (box.y1 + oy) * scale <= FREE[3], f"{path.stem}: view cuts the graph"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_notes_explain_what_to_set(path):
    ui = _load(path)
    notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, f"{path.stem}: no note"
    texts = [str((n.get("widgets_values") or [""])[0]) for n in notes]
    assert all(t.strip() for t in texts)
    loaders = [n for n in ui["nodes"] if n["type"] in ("LoadImage", "CheckpointLoaderSimple", "Trellis2LoadMesh")]
    for node in loaders:  # a user-file widget whose default the user must change is named in a note
        name = node.get("title", node["type"]).split(" (")[0]
        assert any(name in t for t in texts), \
            f"{path.stem}: no note says what to set in {_label(node)}"
    for node in ui["nodes"]:
        if node["type"] not in FRONTEND_ONLY:
            assert node.get("title"), f"{path.stem}: {_label(node)} has no title"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_files_are_laid_out_by_make_workflows(path):
    """Layout lives in make_workflows.PLANS: re-running it changes nothing (no hand-placed nodes to lose)."""
    ui = _load(path)
    assert layout(copy.deepcopy(ui), path.stem) == ui, \
        f"run python tests/workflows/make_workflows.py layout workflows/{path.name}"
