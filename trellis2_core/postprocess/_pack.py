"""Chart packing by horizons ("Tetris" packing, after Lévy et al. 2002, LSCM §6): place each chart's bottom
profile onto the current skyline where it wastes the least area.

A chart is given as its occupied cells (a conservative raster at pack resolution). Per orientation (0°, 90°, 180°,
270°; mirroring is never used, it would flip the UV winding) we keep, per column, the lowest and highest occupied
row. Padding is a *quadrant* dilation (right and up by ``pad`` cells): two charts dilated that way and kept disjoint
are at least ``pad`` cells apart in every direction. For each chart we scan every x position
(vectorised with a sliding window): the resting height is ``max_j(H[x+j] − bottom[j])`` and the cost is the area
left under the chart, plus the area the chart adds above the current maximum height, plus a small preference for
low placements. Charts go longest side first. Numpy, CPU: the inputs are a
few hundred profiles, far too little to be worth a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..cancel import checkpoint

__all__ = ["Placement", "pack_charts", "rotate_cells"]

_FREE = -(1 << 40)  # profile value of an empty column: below any skyline, so max() ignores it


@dataclass(frozen=True)
class Placement:
    """Where each chart went: rotation ``k`` (×90° counter-clockwise) and the cell offset of its rotated box."""

    rotation: np.ndarray  # [C] int64 in 0..3
    offset: np.ndarray  # [C, 2] int64 (x, y) cells
    width: int  # atlas width in cells
    height: int  # atlas height in cells (max skyline)


def rotate_cells(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Rotate cells of boxes ``w × h`` by ``k`` quarter turns counter-clockwise, back into the box's first quadrant.

    Returns ``(x', y', w', h')``. Cell ``(x, y)`` covers ``[x, x+1) × [y, y+1)``; the continuous map is
    ``k=1: (x, y) → (h − y, x)``, ``k=2: (w − x, h − y)``, ``k=3: (y, w − x)``.
    """
    if k == 0:
        return x, y, w, h
    if k == 1:
        return h - 1 - y, x, h, w
    if k == 2:
        return w - 1 - x, h - 1 - y, w, h
    return y, w - 1 - x, h, w


def _profiles(chart: np.ndarray, x: np.ndarray, y: np.ndarray, width: np.ndarray, pad: int):
    """Per-chart bottom/top profiles after quadrant dilation: lists of int arrays (length width + pad)."""
    num = width.shape[0]
    start = np.concatenate(([0], np.cumsum(width + pad)))
    total = int(start[-1])
    bottom = np.full(total, np.iinfo(np.int64).max, dtype=np.int64)
    top = np.full(total, -1, dtype=np.int64)
    col = start[chart] + x
    np.minimum.at(bottom, col, y)
    np.maximum.at(top, col, y + 1)
    # quadrant dilation: column j also covers columns j..j+pad, and top grows by pad
    b_dil, t_dil = bottom.copy(), top.copy()
    first = np.repeat(start[:-1], width + pad)
    pos = np.arange(total) - first
    for s in range(1, pad + 1):
        src = np.arange(total) - s
        valid = pos >= s
        b_dil[valid] = np.minimum(b_dil[valid], bottom[src[valid]])
        t_dil[valid] = np.maximum(t_dil[valid], top[src[valid]])
    empty = t_dil < 0  # a column no raster cell reached (thin slivers): it constrains nothing
    t_dil = np.where(empty, _FREE, t_dil + pad)
    b_dil = np.where(empty, -_FREE, b_dil)
    return [b_dil[start[i]:start[i + 1]] for i in range(num)], [t_dil[start[i]:start[i + 1]] for i in range(num)]


def pack_charts(
    chart: np.ndarray,  # [N] int64 chart id of each occupied cell
    x: np.ndarray,  # [N] int64 cell column inside the chart's box
    y: np.ndarray,  # [N] int64 cell row inside the chart's box
    box: np.ndarray,  # [C, 2] int64 box width, height in cells
    atlas_width: int,
    pad: int,
) -> Placement:
    """Pack charts into an atlas ``atlas_width`` cells wide (grown if a chart is wider); returns the placement."""
    num = box.shape[0]
    w, h = box[:, 0], box[:, 1]
    orient = []
    for k in range(4):
        xr, yr, wr, hr = rotate_cells(x, y, w[chart], h[chart], k)
        bw = w if k % 2 == 0 else h
        orient.append(_profiles(chart, xr, yr, bw, pad))
    widest = int(np.minimum(w, h).max()) + pad if num else 0
    atlas_width = max(atlas_width, widest)
    sky = np.zeros(atlas_width, dtype=np.int64)
    order = np.argsort(-np.maximum(w, h), kind="stable")  # longest side first
    rotation = np.zeros(num, dtype=np.int64)
    offset = np.zeros((num, 2), dtype=np.int64)
    csum = np.zeros(atlas_width + 1, dtype=np.int64)
    for c in order:
        checkpoint("UV chart packing")
        best = None
        ceiling = int(sky.max())
        np.cumsum(sky, out=csum[1:])
        for k in range(4):
            bottom, top = orient[k][0][c], orient[k][1][c]
            cw = bottom.shape[0]
            if cw > atlas_width:
                continue
            used = top != _FREE
            win = sliding_window_view(sky, cw)  # [P, cw], a view
            rest = (win - bottom).max(axis=1)  # [P] resting height: the only O(P·cw) step
            # area left under the chart: Σ_used (rest + bottom_j − H[x+j]), with Σ_j H[x+j] from prefix sums
            under = csum[cw:] - csum[:-cw]
            if not used.all():
                under = under - win[:, ~used].sum(axis=1)
            waste = int(used.sum()) * rest + int(bottom[used].sum()) - under
            peak = rest + int(top[used].max())
            growth = np.maximum(peak - ceiling, 0) * atlas_width
            cost = waste + growth + 0.5 * peak * cw  # last term: prefer low placements (measured +2-3 % fill)
            pos = int(np.argmin(cost))
            if best is None or cost[pos] < best[0]:
                best = (float(cost[pos]), k, pos, int(rest[pos]))
        assert best is not None, "every chart fits in at least one orientation"
        _, k, pos, rest = best
        top = orient[k][1][c]
        span = slice(pos, pos + top.shape[0])
        sky[span] = np.maximum(sky[span], rest + top)
        rotation[c] = k
        offset[c] = (pos, rest)
    return Placement(rotation, offset, atlas_width, int(sky.max()) if num else 0)
