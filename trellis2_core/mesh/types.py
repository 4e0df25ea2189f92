"""Mesh and PBR-voxel result objects, and the single Z-up → Y-up axis conversion (spec §8.3, §9).

The models work in a Z-up frame with the object inside ``[-0.5, 0.5]^3``. glTF is Y-up; the one conversion
between the two lives here (``z_up_to_y_up``) so that export code never re-derives it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["Mesh", "PbrVoxels", "TexturedMesh", "PBR_LAYOUT", "z_up_to_y_up", "y_up_to_z_up"]

# §8.3: channel slices of the 6 PBR attributes decoded by the texture decoder.
PBR_LAYOUT: dict[str, slice] = {
    "base_color": slice(0, 3),
    "metallic": slice(3, 4),
    "roughness": slice(4, 5),
    "alpha": slice(5, 6),
}


def _check_matrix(name: str, t: Tensor, cols: int, dtype: torch.dtype) -> None:
    if not isinstance(t, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] != cols:
        raise InputError(f"{name} must have shape [N, {cols}], got {list(t.shape)}")
    if t.dtype != dtype:
        raise InputError(f"{name} must be {dtype}, got {t.dtype} (convert with .to({dtype}))")


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` float32 ``[V, 3]``, ``faces`` int32 ``[F, 3]`` (indices into vertices).

    Faces are validated to index existing vertices (one device sync); use :meth:`unchecked` from code that
    built the faces itself and knows them valid.
    """

    vertices: Tensor  # [V, 3] float32
    faces: Tensor  # [F, 3] int32
    validate: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_matrix("Mesh.vertices", self.vertices, 3, torch.float32)
        _check_matrix("Mesh.faces", self.faces, 3, torch.int32)
        if self.vertices.device != self.faces.device:
            raise InputError(f"Mesh vertices are on {self.vertices.device} but faces on {self.faces.device}")
        if self.validate and self.faces.numel() > 0:
            lo, hi = int(self.faces.min()), int(self.faces.max())
            if lo < 0 or hi >= self.vertices.shape[0]:
                raise InputError(
                    f"Mesh faces index vertices {lo}..{hi} but there are only {self.vertices.shape[0]} vertices; "
                    "every face index must be in 0..V-1"
                )

    @classmethod
    def unchecked(cls, vertices: Tensor, faces: Tensor) -> "Mesh":
        """Build without the face-range check (dtypes and shapes are still checked)."""
        return cls(vertices, faces, validate=False)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: torch.device | str) -> "Mesh":
        return Mesh.unchecked(self.vertices.to(device), self.faces.to(device))


@dataclass(frozen=True)
class PbrVoxels:
    """Sparse PBR attribute voxels at grid resolution ``resolution`` (spec §8.3 ``MeshWithVoxel`` voxel part).

    ``coords`` int32 ``[M, 3]`` (x, y, z), ``attrs`` float32 ``[M, 6]`` (≈[0, 1], unclamped) with the channel
    layout :data:`PBR_LAYOUT`. Voxel ``i`` covers world ``origin + [i, i+1] * voxel_size``; attribute samples sit
    at voxel centres ``i + 0.5`` (grid units) — §13 item 16.
    """

    coords: Tensor  # [M, 3] int32
    attrs: Tensor  # [M, 6] float32
    resolution: int

    def __post_init__(self) -> None:
        _check_matrix("PbrVoxels.coords", self.coords, 3, torch.int32)
        _check_matrix("PbrVoxels.attrs", self.attrs, 6, torch.float32)
        if self.coords.shape[0] != self.attrs.shape[0]:
            raise InputError(
                f"PbrVoxels needs one attribute row per voxel: {self.coords.shape[0]} coords vs "
                f"{self.attrs.shape[0]} attrs"
            )
        if not isinstance(self.resolution, int) or self.resolution <= 0:
            raise InputError(f"PbrVoxels.resolution must be a positive int, got {self.resolution!r}")

    @property
    def layout(self) -> dict[str, slice]:
        return dict(PBR_LAYOUT)

    @property
    def voxel_size(self) -> float:
        return 1.0 / self.resolution

    @property
    def origin(self) -> tuple[float, float, float]:
        return (-0.5, -0.5, -0.5)

    @property
    def voxel_shape(self) -> tuple[int, int, int, int, int]:
        """``(1, 6, Sx, Sy, Sz)`` with ``S = max coord + 1`` per axis (data-dependent, as official)."""
        if self.coords.shape[0] == 0:
            return (1, 6, 0, 0, 0)
        sx, sy, sz = (int(v) + 1 for v in self.coords.amax(dim=0).tolist())
        return (1, 6, sx, sy, sz)

    def attr(self, name: str) -> Tensor:
        """The channels of one attribute (``base_color`` ``[M,3]``, ``metallic``/``roughness``/``alpha`` ``[M,1]``)."""
        try:
            return self.attrs[:, PBR_LAYOUT[name]]
        except KeyError:
            raise InputError(f"unknown PBR attribute {name!r}; one of {', '.join(PBR_LAYOUT)}") from None


def z_up_to_y_up(points: Tensor) -> Tensor:
    """Convert ``[..., 3]`` points/normals from the model's Z-up frame to glTF's Y-up: ``(x, y, z) → (x, z, −y)``."""
    if points.shape[-1] != 3:
        raise InputError(f"z_up_to_y_up needs a trailing dim of 3, got {list(points.shape)}")
    return torch.stack((points[..., 0], points[..., 2], -points[..., 1]), dim=-1)


def y_up_to_z_up(points: Tensor) -> Tensor:
    """The inverse of :func:`z_up_to_y_up`: glTF Y-up ``(x, y, z) → (x, −z, y)`` in the model's Z-up frame."""
    if points.shape[-1] != 3:
        raise InputError(f"y_up_to_z_up needs a trailing dim of 3, got {list(points.shape)}")
    return torch.stack((points[..., 0], -points[..., 2], points[..., 1]), dim=-1)


@dataclass(frozen=True)
class TexturedMesh:
    """What a GLB holds (§9.6): a UV-mapped mesh in the model frame (Z-up) with its baked PBR textures.

    Texture rows run top to bottom in file order (row 0 ↔ v ≈ 0, glTF's convention).
    """

    vertices: Tensor  # [V, 3] float32, model frame
    faces: Tensor  # [F, 3] int32
    normals: Tensor  # [V, 3] float32 unit vertex normals, model frame
    uvs: Tensor  # [V, 2] float32 in [0, 1]
    base_color: Tensor  # [T, T, 4] uint8 RGBA
    metallic_roughness: Tensor  # [T, T, 3] uint8 (0, roughness, metallic)

    @property
    def mesh(self) -> Mesh:
        return Mesh.unchecked(self.vertices, self.faces)
