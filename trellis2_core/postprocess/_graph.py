"""Vectorised mesh-graph helpers shared by the post-processing steps: edge tables and union-find.

Everything runs as whole-array torch operations (no per-face Python loop), on the device of the input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cancel import checkpoint

__all__ = ["EdgeTable", "edge_table", "union_find", "face_geometry"]


@dataclass(frozen=True)
class EdgeTable:
    """The undirected edges of a triangle mesh and the half-edges that use them.

    Half-edge ``h = 3*f + k`` runs from ``faces[f, k]`` to ``faces[f, (k+1) % 3]``.
    """

    halfedges: Tensor  # [3F, 2] int64, (from, to) vertex ids in face order
    edge_of: Tensor  # [3F] int64, undirected edge id of each half-edge
    edges: Tensor  # [E, 2] int64, (min, max) vertex ids, sorted by key
    counts: Tensor  # [E] int64, how many half-edges use each edge
    order: Tensor  # [3F] int64, half-edge ids grouped by edge (group e starts at starts[e])
    starts: Tensor  # [E] int64

    def manifold_pairs(self) -> tuple[Tensor, Tensor]:
        """The two half-edges of every edge used by exactly two faces: ``(ha, hb)`` each ``[M]`` int64."""
        two = (self.counts == 2).nonzero().squeeze(1)
        first = self.starts[two]
        return self.order[first], self.order[first + 1]

    def boundary_halfedges(self) -> Tensor:
        """Half-edges whose undirected edge is used by exactly one face: ``[B]`` int64."""
        one = (self.counts == 1).nonzero().squeeze(1)
        return self.order[self.starts[one]]


def edge_table(faces: Tensor, num_vertices: int) -> EdgeTable:
    """Build the :class:`EdgeTable` of ``faces`` ``[F,3]`` (any integer dtype)."""
    f = faces.to(torch.int64)
    he = torch.stack((f, f.roll(-1, dims=1)), dim=2).reshape(-1, 2)  # [3F, 2]
    lo = torch.minimum(he[:, 0], he[:, 1])
    hi = torch.maximum(he[:, 0], he[:, 1])
    key = lo * max(num_vertices, 1) + hi
    sorted_key, order = torch.sort(key, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(uniq.numel(), device=f.device), counts)
    edge_of = torch.empty_like(group)
    edge_of[order] = group
    n = max(num_vertices, 1)
    edges = torch.stack((uniq // n, uniq % n), dim=1)
    return EdgeTable(he, edge_of, edges, counts, order, starts)


def _compress(parent: Tensor, parity: Tensor) -> tuple[Tensor, Tensor]:
    """Pointer jumping until every node points at its root, composing the parities along the way."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent, parity
        parity = parity ^ parity[parent]
        parent = grand


def union_find(n: int, u: Tensor, v: Tensor, relation: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Connected components of the graph with ``n`` nodes and edges ``(u[i], v[i])``, with optional parity.

    With ``relation`` (0/1 per edge, meaning ``flip[u] xor flip[v] == relation``) the returned parity says, per
    node, whether it must be flipped relative to its component's root so that the relations of a spanning forest
    hold (relations that contradict the forest, e.g. on a Möbius strip, are ignored). Roots are the smallest node id
    of each component. Returns ``(root [n] int64, parity [n] int64 0/1)``.

    Rounds of hooking the larger root under the smaller one (one winning edge per root) and full path compression;
    hooks always point to a smaller id, so no cycle can form.
    """
    device = u.device
    parent = torch.arange(n, device=device)
    parity = torch.zeros(n, dtype=torch.int64, device=device)
    u = u.to(torch.int64)
    v = v.to(torch.int64)
    rel = torch.zeros_like(u) if relation is None else relation.to(torch.int64)
    while u.numel() > 0:
        checkpoint("a mesh connectivity pass")
        parent, parity = _compress(parent, parity)
        ru, rv = parent[u], parent[v]
        cross = ru != rv
        if not bool(cross.any()):
            break
        u, v, rel, ru, rv = u[cross], v[cross], rel[cross], ru[cross], rv[cross]
        link = parity[u] ^ parity[v] ^ rel  # flip[ru] xor flip[rv]
        hi = torch.maximum(ru, rv)
        lo = torch.minimum(ru, rv)
        winner = torch.full((n,), u.numel(), dtype=torch.int64, device=device)
        winner.scatter_reduce_(0, hi, torch.arange(u.numel(), device=device), reduce="amin")
        hooked = (winner < u.numel()).nonzero().squeeze(1)
        w = winner[hooked]
        parent[hooked] = lo[w]
        parity[hooked] = link[w]
    return _compress(parent, parity)


def face_geometry(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Per-face ``(cross [F,3], area [F])``: un-normalised normal ``(b−a)×(c−a)`` and triangle area."""
    p = vertices[faces.to(torch.int64)]  # [F, 3, 3]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)
    return cross, 0.5 * cross.norm(dim=1)
