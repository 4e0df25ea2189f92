"""Closest points on a triangle mesh: exact point–triangle distance + a uniform grid of triangle boxes (§9.1 step 3).

The official export builds a GPU BVH (``cubvh``) over the hole-filled original mesh and asks it for the closest
point (face id + barycentrics) of every baked texel (§9.5 step 3) and for the unsigned distance of the remesher's
grid points (§9.2). This module answers the same queries with plain, vectorised PyTorch on any device:

* :func:`closest_point_on_triangles` — the exact closest point of one point to one triangle, by the Voronoi-region
  tests of Ericson (*Real-Time Collision Detection*, §5.1.5): vertex regions, edge regions, then the face interior.
* :class:`TriangleGrid` — a uniform grid; every triangle is listed in each cell its bounding box overlaps (sorted
  cell keys + ``searchsorted``, no hash table). A query visits Chebyshev rings of cells around its own cell, nearest
  first, skipping cells and triangle boxes farther than the best distance found so far, and stops when the next
  ring cannot hold anything closer. The answer is exact (the same distance a brute-force search finds); points
  with nothing within ``max_distance`` get face ``-1``.

Work is done in chunks of candidate pairs, so memory stays bounded (about ``_PAIR_BATCH`` × 150 bytes); each chunk
polls for cancellation (:func:`~trellis2_core.cancel.checkpoint`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cancel import checkpoint
from ..errors import InputError

__all__ = ["ClosestPoints", "TriangleGrid", "closest_point_on_triangles", "closest_points", "sorted_positions"]

_QUERY_CHUNK = 1 << 18  # queries searched together
_PAIR_BATCH = 1 << 22  # (query, triangle) pairs evaluated together: bounds temporary memory
_PAIR_BATCH_CPU = 1 << 18  # smaller on the CPU: one batch takes well under a second between two cancel polls
_ENTRY_BATCH = 1 << 23  # (face, cell) entries expanded together while the grid is built: bounds its temporaries
_MAX_ENTRIES_PER_FACE = 16  # the cell size grows until the grid lists at most this many cells per face on average
_MAX_CELLS_PER_AXIS = 1 << 20  # packed int64 cell keys need dims below 2^21 per axis


@dataclass(frozen=True)
class ClosestPoints:
    """Answer of a closest-point query for ``Q`` points (rows with ``face == -1`` found nothing in range)."""

    face: Tensor  # [Q] int64, -1 = nothing within max_distance
    bary: Tensor  # [Q, 3] barycentric weights of the face's three vertices (0 where not found)
    point: Tensor  # [Q, 3] closest point on the mesh (the query point itself where not found)
    distance: Tensor  # [Q] Euclidean distance (inf where not found)

    @property
    def found(self) -> Tensor:
        """[Q] bool: a face lies within the search radius."""
        return self.face >= 0


def closest_point_on_triangles(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Closest point on triangle ``(a, b, c)`` to ``p``, row by row (all ``[K, 3]``). Returns ``(point, bary)``.

    Ericson's region tests: the vertex regions of a, b, c, the edge regions of ab, ac, bc, else the interior (the
    first region that applies wins). A degenerate triangle that reaches the interior case (zero area) is answered
    by the closest of its three edges, so the result is always a point of the triangle.
    """
    ab, ac, ap = b - a, c - a, p - a
    v, w = _region_weights((ab * ap).sum(-1), (ac * ap).sum(-1), (ab * ab).sum(-1), (ab * ac).sum(-1),
                           (ac * ac).sum(-1))
    bad = ~(torch.isfinite(v) & torch.isfinite(w))
    if bool(bad.any()):  # zero-area triangle in its "interior" case: take the best of the three edges
        idx = bad.nonzero().squeeze(1)
        v_e, w_e = _closest_on_edges(p[idx], a[idx], b[idx], c[idx])
        v, w = v.index_put((idx,), v_e), w.index_put((idx,), w_e)
    point = a + v[:, None] * ab + w[:, None] * ac
    return point, torch.stack((1 - v - w, v, w), dim=1)


def _region_weights(d1: Tensor, d2: Tensor, aa: Tensor, abac: Tensor, cc: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric weights ``(v, w)`` of b and c of the closest point (Ericson), from ``d1 = ab·(p−a)``,
    ``d2 = ac·(p−a)`` and the triangle's edge Gram entries ``|ab|², ab·ac, |ac|²`` (all ``[K]``).

    The other four dot products of the region tests follow from these: ``ab·(p−b) = d1 − |ab|²``,
    ``ac·(p−b) = d2 − ab·ac``, ``ab·(p−c) = d1 − ab·ac``, ``ac·(p−c) = d2 − |ac|²``."""
    d3, d4, d5, d6 = d1 - aa, d2 - abac, d1 - abac, d2 - cc
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    denom = va + vb + vc
    v = vb / denom  # interior (non-finite for zero-area triangles; the callers handle those)
    w = vc / denom
    # Ericson returns at the first region that holds; applying the tests last-to-first gives the same answer.
    e_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    in_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    v, w = torch.where(in_bc, 1 - e_bc, v), torch.where(in_bc, e_bc, w)
    in_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    v, w = torch.where(in_ac, zero, v), torch.where(in_ac, d2 / (d2 - d6), w)
    in_c = (d6 >= 0) & (d5 <= d6)
    v, w = torch.where(in_c, zero, v), torch.where(in_c, one, w)
    in_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    v, w = torch.where(in_ab, d1 / (d1 - d3), v), torch.where(in_ab, zero, w)
    in_b = (d3 >= 0) & (d4 <= d3)
    v, w = torch.where(in_b, one, v), torch.where(in_b, zero, w)
    in_a = (d1 <= 0) & (d2 <= 0)
    return torch.where(in_a, zero, v), torch.where(in_a, zero, w)


def _closest_on_edges(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(v, w)`` of the closest point among the three edge segments (for zero-area triangles)."""
    best_d, best_v, best_w = None, None, None
    for s, e, to_vw in ((a, b, lambda t: (t, 0 * t)), (a, c, lambda t: (0 * t, t)), (b, c, lambda t: (1 - t, t))):
        d = e - s
        t = ((p - s) * d).sum(-1) / (d * d).sum(-1).clamp(min=torch.finfo(p.dtype).tiny)
        t = t.clamp(0, 1)
        dist = (s + t[:, None] * d - p).square().sum(-1)
        v, w = to_vw(t)
        if best_d is None:
            best_d, best_v, best_w = dist, v, w
        else:
            better = dist < best_d
            best_d = torch.where(better, dist, best_d)
            best_v, best_w = torch.where(better, v, best_v), torch.where(better, w, best_w)
    return best_v, best_w


def _check_mesh(vertices: Tensor, faces: Tensor) -> None:
    if not isinstance(vertices, Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3 \
            or not vertices.dtype.is_floating_point:
        raise InputError(f"vertices must be a float tensor [n, 3], got {getattr(vertices, 'dtype', type(vertices))} "
                         f"{list(getattr(vertices, 'shape', []))}")
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
        raise InputError(f"faces must be an integer tensor [m, 3], got {getattr(faces, 'dtype', type(faces))} "
                         f"{list(getattr(faces, 'shape', []))}")
    if faces.shape[0] == 0:
        raise InputError("closest-point queries need a mesh with at least one face")
    if faces.device != vertices.device:
        raise InputError(f"vertices are on {vertices.device} but faces on {faces.device}")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise InputError(f"faces index vertices {lo}..{hi} but there are {vertices.shape[0]} vertices")
    if not bool(torch.isfinite(vertices).all()):
        raise InputError("the mesh has NaN or infinite vertex coordinates")


def sorted_positions(sorted_keys: Tensor, query: Tensor) -> Tensor:
    """Position of each ``query`` key in the ascending ``sorted_keys``, -1 when absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys.index_select(0, pos.reshape(-1)).view_as(pos) == query, pos, -1)


def _expand(count: Tensor) -> tuple[Tensor, Tensor]:
    """For ``count`` [N] int64: ``(owner, rank)`` of every one of the ``Σ count`` items (rank within its owner)."""
    owner = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
    start = torch.cumsum(count, 0) - count
    return owner, torch.arange(owner.numel(), device=count.device) - start[owner]


def _batches(count: Tensor, limit: int) -> list[tuple[int, int]]:
    """Split owners ``0..N`` into consecutive ranges whose total ``count`` stays near ``limit`` (≥ 1 owner each)."""
    total = torch.cumsum(count, 0)
    n = count.numel()
    if n == 0:
        return []
    cuts = torch.searchsorted(total, torch.arange(limit, int(total[-1]) + limit, limit, device=count.device),
                              right=True).tolist()
    out, start = [], 0
    for cut in cuts + [n]:
        end = max(min(cut, n), start + 1)
        if start < n:
            out.append((start, end))
        start = end
        if start >= n:
            break
    return out


class TriangleGrid:
    """Uniform grid over the bounding boxes of a mesh's triangles, for exact closest-point queries.

    ``cell_size`` defaults to the mean longest bounding-box side of the triangles (so a triangle spans about two
    cells per axis), grown if needed to keep the grid small (dims < 2²¹ per axis, ≤ 16 cells listed per face).
    Triangle data are stored in the vertices' dtype (float32 or float64) and component-major (``[12, m]``), faces
    in a spatial order, so the gathers of one cell's candidates read nearby memory; queries run in that dtype.
    """

    def __init__(self, vertices: Tensor, faces: Tensor, cell_size: float | None = None):
        _check_mesh(vertices, faces)
        if cell_size is not None and not (math.isfinite(cell_size) and cell_size > 0):
            raise InputError(f"cell_size must be a positive number, got {cell_size!r}")
        self.device = vertices.device
        self.dtype = vertices.dtype
        tri = vertices[faces.to(torch.int64)]  # [m, 3, 3]
        box_lo, box_hi = tri.amin(1), tri.amax(1)
        self.origin = box_lo.amin(0)
        extent = (box_hi.amax(0) - self.origin).clamp(min=1e-12)
        h = float(cell_size) if cell_size is not None else float((box_hi - box_lo).amax(1).mean().clamp(min=1e-12))
        h = max(h, float(extent.max()) / _MAX_CELLS_PER_AXIS)
        while True:
            checkpoint("closest-point grid build")
            cell_lo = torch.floor((box_lo - self.origin) / h).to(torch.int64)
            cell_hi = torch.floor((box_hi - self.origin) / h).to(torch.int64)
            span = cell_hi - cell_lo + 1  # [m, 3]
            per_face = span.prod(1)
            if int(per_face.sum()) <= _MAX_ENTRIES_PER_FACE * faces.shape[0] + 64:
                break
            h *= 1.5
        checkpoint("closest-point grid build")
        self.cell_size = h
        self.pair_batch = _PAIR_BATCH if self.device.type != "cpu" else _PAIR_BATCH_CPU
        self.dims = (cell_hi.amax(0) + 1).clamp(min=1)  # [3] int64
        # faces in the order of their first cell: candidates of one cell sit close together in the tables
        self.face_id = torch.sort(self._key(cell_lo), stable=True).indices  # [m] local -> input face id
        cell_lo, span, per_face = cell_lo[self.face_id], span[self.face_id], per_face[self.face_id]
        tri, box_lo, box_hi = tri[self.face_id], box_lo[self.face_id], box_hi[self.face_id]
        a, ab, ac = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        # rows: a (3), ab (3), ac (3), |ab|², ab·ac, |ac|² — everything the region tests read
        self.tri = torch.cat((a, ab, ac, (ab * ab).sum(1, keepdim=True), (ab * ac).sum(1, keepdim=True),
                              (ac * ac).sum(1, keepdim=True)), 1).t().contiguous()  # [12, m]
        # unit normals in float64; 0 (no plane bound) for near-degenerate faces (sin of the corner angle < 1e-6),
        # whose rounded cross product has no reliable direction
        ab64, ac64 = ab.double(), ac.double()
        cross = torch.linalg.cross(ab64, ac64, dim=1)
        length = cross.norm(dim=1, keepdim=True)
        sound = length > 1e-6 * ab64.norm(dim=1, keepdim=True) * ac64.norm(dim=1, keepdim=True)
        normal = torch.where(sound, cross / length.clamp(min=1e-300), 0.0).to(self.dtype)
        # rows: box min (3), box max (3), unit normal (3), normal·a — two lower bounds of a point's distance
        self.bound = torch.cat((box_lo, box_hi, normal, (normal * a).sum(1, keepdim=True)), 1).t().contiguous()
        del tri, box_lo, box_hi, a, ab, ac, ab64, ac64, cross, length, sound, normal  # before the [E] tables
        checkpoint("closest-point grid build")
        keys, face_of = self._entry_keys(cell_lo, span, per_face)
        keys, order = torch.sort(keys, stable=True)
        self.entry_face = face_of[order]  # [E] local face ids, listed cell by cell
        del face_of, order
        self.cell_keys, counts = torch.unique_consecutive(keys, return_counts=True)  # [C] non-empty cells
        self.cell_start = torch.cumsum(counts, 0) - counts
        self.cell_count = counts
        self._rings: dict[int, tuple[Tensor, list[Tensor]]] = {}  # ring -> (offsets, shell masks by L1 norm)

    def _entry_keys(self, cell_lo: Tensor, span: Tensor, per_face: Tensor) -> tuple[Tensor, Tensor]:
        """``(cell key, face)`` of every (face, cell it overlaps) entry, faces in order and each face's cells in
        x-fastest order. Built over consecutive ranges of about ``_ENTRY_BATCH`` entries, so that the per-entry
        temporaries (ranks, spans, offsets, cells: ~130 bytes an entry) stay bounded and only the two results
        (16 bytes an entry) grow with the mesh: the expansion was the export's VRAM peak on big meshes."""
        keys, faces = [], []
        for lo, hi in _batches(per_face, _ENTRY_BATCH):
            face_of, rank = _expand(per_face[lo:hi])
            sp = span[lo:hi][face_of]
            offset = torch.stack((rank % sp[:, 0], (rank // sp[:, 0]) % sp[:, 1], rank // (sp[:, 0] * sp[:, 1])), 1)
            keys.append(self._key(cell_lo[lo:hi][face_of] + offset))
            faces.append(face_of + lo)
            del face_of, rank, sp, offset
        if not keys:
            empty = torch.zeros(0, dtype=torch.int64, device=cell_lo.device)
            return empty, empty
        return (torch.cat(keys) if len(keys) > 1 else keys[0]), (torch.cat(faces) if len(faces) > 1 else faces[0])

    @property
    def num_faces(self) -> int:
        return int(self.tri.shape[1])

    def _key(self, cell: Tensor) -> Tensor:
        return (cell[..., 0] * self.dims[1] + cell[..., 1]) * self.dims[2] + cell[..., 2]

    def _cell_rows(self, key: Tensor) -> Tensor:
        """Row of each packed cell key among the non-empty cells, -1 if empty."""
        return sorted_positions(self.cell_keys, key)

    def query(self, points: Tensor, max_distance: float = math.inf) -> ClosestPoints:
        """Closest point on the mesh to every row of ``points`` [Q, 3] within ``max_distance`` (world units).

        A finite ``max_distance`` bounds the search (a few cell sizes makes it fast); ``inf`` always finds a face.
        Among equally close faces the choice is deterministic.
        """
        if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 3 \
                or not points.dtype.is_floating_point:
            raise InputError(f"points must be a float tensor [Q, 3], got {getattr(points, 'dtype', type(points))} "
                             f"{list(getattr(points, 'shape', []))}")
        if points.device != self.device:
            raise InputError(f"points are on {points.device} but the mesh on {self.device}")
        if not (max_distance > 0):
            raise InputError(f"max_distance must be > 0, got {max_distance!r}")
        p_all = points.to(self.dtype)
        q_n = p_all.shape[0]
        # visit the queries in cell order (memory locality); results go back to the input order
        home = torch.floor((p_all - self.origin) / self.cell_size).clamp(-1, _MAX_CELLS_PER_AXIS).to(torch.int64)
        order = torch.sort(self._key(home + 1)).indices
        local = torch.full((q_n,), -1, dtype=torch.int64, device=self.device)
        for s in range(0, q_n, _QUERY_CHUNK):
            checkpoint("closest-point search")
            rows = order[s:s + _QUERY_CHUNK]
            local[rows] = self._search(p_all.index_select(0, rows), float(max_distance))
        if q_n <= _QUERY_CHUNK:
            return self._answer(p_all, local)
        parts = []
        for s in range(0, q_n, _QUERY_CHUNK):  # chunked: bounded memory, one cancel poll each
            checkpoint("closest-point search")
            parts.append(self._answer(p_all[s:s + _QUERY_CHUNK], local[s:s + _QUERY_CHUNK]))
        return ClosestPoints(face=torch.cat([x.face for x in parts]), bary=torch.cat([x.bary for x in parts]),
                             point=torch.cat([x.point for x in parts]),
                             distance=torch.cat([x.distance for x in parts]))

    def _answer(self, p: Tensor, local: Tensor) -> ClosestPoints:
        found = local >= 0
        t = self.tri.index_select(1, local.clamp(min=0)).t()  # [Q, 12]
        a = t[:, 0:3]
        point, bary = closest_point_on_triangles(p, a, a + t[:, 3:6], a + t[:, 6:9])
        point = torch.where(found[:, None], point, p)
        bary = torch.where(found[:, None], bary, torch.zeros_like(bary))
        dist = torch.where(found, (point - p).norm(dim=1), torch.full_like(p[:, 0], math.inf))
        face = torch.where(found, self.face_id.index_select(0, local.clamp(min=0)), -1)
        return ClosestPoints(face=face, bary=bary, point=point, distance=dist)

    def _search(self, p: Tensor, max_distance: float) -> Tensor:
        """Local face id of the closest triangle for each row of ``p`` (-1 beyond ``max_distance``)."""
        h = self.cell_size
        n = p.shape[0]
        dev = self.device
        best_d2 = torch.full((n,), max_distance * max_distance, dtype=self.dtype, device=dev)
        best_f = torch.full((n,), -1, dtype=torch.int64, device=dev)
        home = torch.floor((p - self.origin) / h).to(torch.int64)  # [n, 3], may lie outside the grid
        p_soa = p.t().contiguous()  # [3, n]
        # rings before the grid starts hold no cells: begin at the Chebyshev distance to the grid box
        outside = torch.maximum(-home, home - (self.dims - 1)).clamp(min=0).amax(1)  # [n]
        last_ring = int(self.dims.max()) + int(outside.max())
        if math.isfinite(max_distance):
            last_ring = min(last_ring, int(math.ceil(max_distance / h)) + 1)
        ring = int(outside.min())
        while ring <= last_ring:
            # every cell of ring k lies at least (k − 1)·h from the point: stop when that cannot beat the best
            reach = max(ring - 1, 0) * h
            alive = ((reach * reach < best_d2) & (outside <= ring)).nonzero().squeeze(1)
            if alive.numel() == 0:
                later = outside > ring
                if bool(later.any()) and ring < last_ring:
                    ring = int(outside[later].min())
                    continue
                break
            self._visit_ring(p, p_soa, home, alive, ring, best_d2, best_f)
            ring += 1
        return best_f

    def _visit_ring(self, p: Tensor, p_soa: Tensor, home: Tensor, alive: Tensor, ring: int, best_d2: Tensor,
                    best_f: Tensor) -> None:
        """Test the faces listed in the ring-``ring`` cells of the points ``alive``; update the bests in place.

        Cell pruning is factorised per axis: the squared gap from a point to a cell box is the sum of three per-axis
        gaps, so the ``(2k+1)³`` candidate cells of a point cost three ``[2k+1]`` gap vectors and one broadcast sum.
        """
        if ring not in self._rings:
            r = torch.arange(-ring, ring + 1, device=self.device)
            lat = r.abs()
            cheb = torch.maximum(torch.maximum(lat[:, None, None], lat[None, :, None]), lat[None, None, :])
            l1 = lat[:, None, None] + lat[None, :, None] + lat[None, None, :]
            # cells of the ring grouped by L1 norm of the offset: face neighbours first, corners last
            self._rings[ring] = (r, [(cheb == ring) & (l1 == n) for n in range(ring, 3 * ring + 1)] or
                                 [cheb == ring])
        offs, waves = self._rings[ring]
        width = offs.numel()
        step = max(1, self.pair_batch // (4 * width ** 3))
        h = self.cell_size
        for s in range(0, alive.numel(), step):
            checkpoint("closest-point search")
            q = alive[s:s + step]
            hq = home.index_select(0, q)
            cell = hq[:, :, None] + offs  # [k, 3, L] per-axis cell index
            lo = self.origin[:, None] + cell.to(self.dtype) * h
            pq = p.index_select(0, q)[:, :, None]
            gap = torch.maximum(lo - pq, pq - (lo + h)).clamp(min=0).square()  # [k, 3, L]
            gap = gap.masked_fill((cell < 0) | (cell >= self.dims[:, None]), math.inf)
            total = gap[:, 0, :, None, None] + gap[:, 1, None, :, None] + gap[:, 2, None, None, :]  # [k, L, L, L]
            for wave in waves:  # nearest cells first, so the later waves prune against a tighter best
                checkpoint("closest-point search")
                near = wave & (total < best_d2.index_select(0, q)[:, None, None, None])
                qi, i, j, l = near.nonzero().unbind(1)
                if qi.numel() == 0:
                    continue
                c = hq.index_select(0, qi) + torch.stack((offs[i], offs[j], offs[l]), 1)
                row = self._cell_rows(self._key(c))
                hit = (row >= 0).nonzero().squeeze(1)
                owner, row = q.index_select(0, qi.index_select(0, hit)), row.index_select(0, hit)
                self._test_cells(p_soa, owner, self.cell_start.index_select(0, row),
                                 self.cell_count.index_select(0, row), best_d2, best_f)

    def _test_cells(self, p_soa: Tensor, owner: Tensor, start: Tensor, count: Tensor, best_d2: Tensor,
                    best_f: Tensor) -> None:
        """Exact distances from the points ``owner`` to every face listed in the given cells (bounded batches).

        Faces whose lower bound — the larger of the bounding-box gap and the distance to the face's plane — is not
        below the point's best are skipped before the exact test."""
        for b0, b1 in _batches(count, self.pair_batch):
            checkpoint("closest-point search")
            o, rank = _expand(count[b0:b1])
            qid = owner[b0:b1].index_select(0, o)
            fid = self.entry_face.index_select(0, start[b0:b1].index_select(0, o) + rank)
            px, py, pz = p_soa.index_select(1, qid).unbind(0)
            bx = self.bound.index_select(1, fid)
            gap2 = ((bx[0] - px).clamp(min=0) + (px - bx[3]).clamp(min=0)).square() \
                + ((bx[1] - py).clamp(min=0) + (py - bx[4]).clamp(min=0)).square() \
                + ((bx[2] - pz).clamp(min=0) + (pz - bx[5]).clamp(min=0)).square()
            plane2 = (bx[6] * px + bx[7] * py + bx[8] * pz - bx[9]).square()
            keep = (torch.maximum(gap2, plane2) < best_d2.index_select(0, qid)).nonzero().squeeze(1)
            if keep.numel() == 0:
                continue
            qid, fid = qid.index_select(0, keep), fid.index_select(0, keep)
            px, py, pz = px.index_select(0, keep), py.index_select(0, keep), pz.index_select(0, keep)
            t = self.tri.index_select(1, fid)  # [12, P]
            apx, apy, apz = px - t[0], py - t[1], pz - t[2]
            d1 = t[3] * apx + t[4] * apy + t[5] * apz
            d2 = t[6] * apx + t[7] * apy + t[8] * apz
            v, w = _region_weights(d1, d2, t[9], t[10], t[11])
            dist2 = (apx - v * t[3] - w * t[6]).square() + (apy - v * t[4] - w * t[7]).square() \
                + (apz - v * t[5] - w * t[8]).square()
            bad = (~torch.isfinite(dist2)).nonzero().squeeze(1)
            if bad.numel() > 0:  # zero-area faces in their "interior" case: closest of the three edges
                pb = torch.stack((px, py, pz), 1).index_select(0, bad)
                tb = t.index_select(1, bad).t()
                a = tb[:, 0:3]
                vb, wb = _closest_on_edges(pb, a, a + tb[:, 3:6], a + tb[:, 6:9])
                fixed = (pb - a - vb[:, None] * tb[:, 3:6] - wb[:, None] * tb[:, 6:9]).square().sum(1)
                dist2 = dist2.index_put((bad,), fixed)
            _merge_best(qid, fid, dist2, best_d2, best_f)


def _merge_best(qid: Tensor, fid: Tensor, d2: Tensor, best_d2: Tensor, best_f: Tensor) -> None:
    """Fold candidate ``(query, face, d²)`` triples into the running bests: smaller d² wins, ties go to the
    smaller face id (deterministic on every device)."""
    new_d2 = best_d2.clone().scatter_reduce_(0, qid, d2, reduce="amin")
    improved = new_d2 < best_d2
    tie = d2 == new_d2[qid]
    big = torch.iinfo(torch.int64).max
    cand_f = torch.full_like(best_f, big).scatter_reduce_(0, qid, torch.where(tie, fid, big), reduce="amin")
    has = cand_f < big
    take = improved | (has & (new_d2 == best_d2) & ((best_f < 0) | (cand_f < best_f)))
    best_f.copy_(torch.where(take & has, cand_f, best_f))
    best_d2.copy_(new_d2)


def closest_points(vertices: Tensor, faces: Tensor, points: Tensor, max_distance: float = math.inf,
                   cell_size: float | None = None) -> ClosestPoints:
    """One-shot :meth:`TriangleGrid.query`: closest point on mesh ``(vertices [n,3], faces [m,3])`` to ``points``."""
    return TriangleGrid(vertices, faces, cell_size).query(points, max_distance)
