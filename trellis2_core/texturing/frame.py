"""The texturing pipeline's mesh normalisation and its inverse (official ``preprocess_mesh``, spec §11 step 2).

The official pipeline keeps only the vertex and face arrays of the input mesh, centres the vertices on their
bounding-box centre, scales the largest extent to ``0.99999`` and swaps the axes from the glTF Y-up frame to the
model's Z-up frame, ``(x, y, z) → (x, −z, y)``, all in float64 over every vertex (referenced or not). Faces are
kept as they are (no merging, no removal of degenerate faces, same order and winding). :class:`MeshFrame`
remembers the centre and scale so results can be mapped back onto the input mesh (the official code forgets them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["MeshFrame", "PreparedMesh", "preprocess_mesh", "EXTENT"]

EXTENT = 0.99999  # the official target size of the largest bounding-box side


def _swap_to_z_up(p: Tensor) -> Tensor:
    return torch.stack((p[..., 0], -p[..., 2], p[..., 1]), dim=-1)


def _swap_to_y_up(p: Tensor) -> Tensor:
    return torch.stack((p[..., 0], p[..., 2], -p[..., 1]), dim=-1)


@dataclass(frozen=True)
class MeshFrame:
    """Input frame ↔ working frame: ``working = swap((input − center) · scale)`` with ``swap(x, y, z) = (x, −z, y)``."""

    center: tuple[float, float, float]  # bounding-box centre of the input vertices (input frame)
    scale: float  # 0.99999 / largest bounding-box extent

    def to_working(self, points: Tensor) -> Tensor:
        """Input-frame points ``[..., 3]`` → working frame (float64, the official arithmetic order)."""
        p = points.to(torch.float64)
        center = torch.tensor(self.center, dtype=torch.float64, device=p.device)
        return _swap_to_z_up((p - center) * self.scale)

    def to_input(self, points: Tensor) -> Tensor:
        """Working-frame points ``[..., 3]`` → input frame (float64): the inverse of :meth:`to_working`."""
        p = _swap_to_y_up(points.to(torch.float64))
        center = torch.tensor(self.center, dtype=torch.float64, device=p.device)
        return p / self.scale + center

    def directions_to_input(self, vectors: Tensor) -> Tensor:
        """Working-frame directions (normals, tangents) ``[..., 3]`` → input frame (rotation only; unit length kept)."""
        return _swap_to_y_up(vectors)


@dataclass(frozen=True)
class PreparedMesh:
    """The mesh as the texturing models see it: ``vertices`` float64 ``[V, 3]`` in the working frame, ``faces``
    int64 ``[F, 3]`` unchanged from the input, and the frame that maps back to the input."""

    vertices: Tensor  # [V, 3] float64, inside [-0.5, 0.5]^3, Z-up
    faces: Tensor  # [F, 3] int64
    frame: MeshFrame


def _as_tensor(name: str, value: object, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"mesh {name} must be an array of numbers, got {type(value).__name__} ({err})") from err


def preprocess_mesh(vertices: Tensor, faces: Tensor) -> PreparedMesh:
    """Normalise a mesh exactly as the official ``Trellis2TexturingPipeline.preprocess_mesh``.

    Args:
        vertices: ``[V, 3]`` positions in the input (Y-up) frame; any float dtype, array-like accepted.
        faces: ``[F, 3]`` vertex indices (triangles only).
    """
    v = _as_tensor("vertices", vertices, torch.float64).to(torch.float64)
    f = _as_tensor("faces", faces, torch.int64)
    if v.dim() != 2 or v.shape[1] != 3 or v.shape[0] == 0:
        raise InputError(f"mesh vertices must be a non-empty [V, 3] array, got shape {list(v.shape)}")
    if f.dim() != 2 or f.shape[1] != 3 or f.shape[0] == 0:
        raise InputError(f"mesh faces must be a non-empty [F, 3] array of triangles, got shape {list(f.shape)}; "
                         "triangulate quads/polygons first")
    if f.is_floating_point():
        if not bool((f == f.round()).all()):
            raise InputError("mesh faces must hold integer vertex indices")
    f = f.to(torch.int64)
    if int(f.min()) < 0 or int(f.max()) >= v.shape[0]:
        raise InputError(f"mesh faces index vertices {int(f.min())}..{int(f.max())}, but the mesh has "
                         f"{v.shape[0]} vertices")
    if not bool(torch.isfinite(v).all()):
        raise InputError("mesh vertices contain NaN or infinite coordinates; clean the mesh first")
    lo, hi = v.amin(dim=0), v.amax(dim=0)
    center = (lo + hi) / 2
    extent = float((hi - lo).max())
    if extent <= 0.0:
        raise InputError("mesh has zero extent (all vertices coincide); nothing to texture")
    frame = MeshFrame(center=tuple(float(c) for c in center.tolist()), scale=EXTENT / extent)
    work = frame.to_working(v)
    if bool((work < -0.5).any()) or bool((work > 0.5).any()):
        raise InputError("normalised mesh vertices fall outside [-0.5, 0.5] (numerically extreme coordinates); "
                         "recentre or rescale the mesh before texturing")
    return PreparedMesh(vertices=work, faces=f, frame=frame)
